//! A short `strata lab` on both kernels so the harness can't rot: small counts, no timing
//! assertions — only that every kernel, phase and strategy produced numbers and the outputs
//! (table, JSON, SVG) exist. The 6.12 kernel is given by path (`--kernel DIR`), as a user
//! brings their own kernel.
//!
//! On 6.1 it also pins `strata trace`'s attribution end to end, in its default mode: the
//! reclaim cycle's `drop_caches` walks 200 k negative dentries in one `super_cache_scan` call
//! holding `shrinker_rwsem` (hundreds of ms under TCG) while the benches mount every 20 ms, so
//! mounts and umounts wait; the longest wait must be attributed to a reader running
//! `super_cache_scan`.

#[test]
fn short_lab_runs_on_6_1_and_6_12() {
    let _machine = crate::alone();
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("lab.json");
    let k612 = strata_vm::kernel::GuestKernel::fetch(strata_vm::kernel::KernelChoice::Debian6_12)
        .expect("6.12 kernel")
        .dir;
    let svg = t.path().join("lab.svg");
    let out = crate::strata()
        .cmd()
        .args([
            "lab",
            "--kernel",
            "6.1",
            "--kernel",
            k612.to_str().unwrap(),
            "--n",
            "10",
            "--dentries",
            "200000",
        ])
        .args(["--cycles", "1", "--timeout", "600", "--workdir"])
        .arg(t.path().join("work"))
        .arg("--output")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "strata lab failed");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let phases = run["phases"].as_array().unwrap();
        let names: Vec<&str> = phases
            .iter()
            .map(|p| p["phase"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["idle", "pressure"], "{run}");
        for p in phases {
            let strategies: Vec<&str> = p["strategies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap())
                .collect();
            for s in ["overlay-mount", "tmpfs-mount", "strata"] {
                assert_eq!(
                    strategies.iter().filter(|n| **n == s).count(),
                    2,
                    "{s} start+end in {p}"
                );
            }
        }
        assert!(run["errors"].as_array().unwrap().is_empty(), "{run}");
    }
    let console = std::fs::read_to_string(t.path().join("work/6.1/console.log")).unwrap();
    check_trace(&console);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("overlay-mount"));
    assert!(stdout.contains("kernel 6.12"));
}

/// The 6.1 guest's trace (`@trace` line): default mode, every group attached, and the longest
/// wait held up by a reader inside a shrinker during a mount.
fn check_trace(console: &str) {
    let line = console
        .lines()
        .find_map(|l| l.find("@trace ").map(|i| &l[i + 7..]))
        .unwrap_or_else(|| panic!("no @trace line in the 6.1 console:\n{console}"));
    let t: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let report: Vec<&str> = console
        .lines()
        .filter_map(|l| l.find("@trace-report ").map(|i| &l[i + 14..]))
        .collect();
    let report = report.join("\n");
    assert_eq!(t["source"], "ebpf", "{report}");
    assert_eq!(t["mode"], "default", "{report}");
    assert!(t["missing"].as_array().unwrap().is_empty(), "{report}");
    // The longest wait: in a mount (alloc_super) or an umount's teardown (unregister_shrinker).
    let w = &t["waits"][0];
    assert!(
        w["in_mount"].as_str().is_some_and(|m| m.ends_with("mount")),
        "{report}"
    );
    let h = &w["holders"][0];
    assert_eq!(h["role"], "reader", "{report}");
    // Which shrinker held it depends on what reclaim found to scan at that moment (the
    // dentries' super_cache_scan, or kfree_rcu_shrink_scan when the machine is loaded); the
    // attribution to a shrinker is what is pinned here.
    assert!(
        h["shrinker"].as_str().is_some_and(|s| s.contains("scan")),
        "{report}"
    );
    assert!(
        w["attributed_ms"].as_f64().unwrap() > 0.5 * w["wait_ms"].as_f64().unwrap(),
        "{report}"
    );
}

/// `strata demo` and `strata demo --erofs`, the guided tour, both succeed (exit 0: the guest saw
/// the image with its whiteout, the upper got the writes, 0 host mounts), and with --erofs the
/// container's layers are on the read-only disk.
#[test]
fn the_demo_runs_with_the_layer_device_and_with_erofs() {
    let _machine = crate::shared();
    for erofs in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let mut cmd = crate::strata().cmd();
        cmd.arg("demo").arg("--dir").arg(t.path());
        if erofs {
            cmd.arg("--erofs");
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "demo (erofs: {erofs}) failed:\n{text}"
        );
        assert!(
            text.contains("host mounts during container start: 0"),
            "{text}"
        );
        assert_eq!(
            text.contains("the layers are on /dev/vda (serial strata-lower, read-only: 1)"),
            erofs,
            "{text}"
        );
    }
}
