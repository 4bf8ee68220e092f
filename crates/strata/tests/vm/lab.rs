//! A short `strata lab` on both kernels so the harness can't rot: small counts, no timing
//! assertions — only that every kernel, phase and strategy produced numbers and the outputs
//! (table, JSON, SVG) exist. The 6.12 kernel is given by path (`--kernel DIR`), as a user
//! brings their own kernel.

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
            "20000",
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
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("overlay-mount"));
    assert!(stdout.contains("kernel 6.12"));
}
