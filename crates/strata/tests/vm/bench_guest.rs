//! A short `strata bench guest` on the tiny rootfs so the harness can't rot: one run, small
//! workloads, no timing assertions — only that every setup produced a number for every
//! workload, strata's FUSE request counts came back, and the outputs (table, JSON, SVG) exist.
//! Setup (f), the root merged by the daemon, is one of the defaults and must see the same tiny
//! rootfs (a whiteout, an opaque dir). Setup (e), opt-in, gets its own short run. Setup (a)
//! needs virtiofsd (`scripts/bench-guest` installs it); without it the bench skips (a) and
//! says so, and so does this test.

#[test]
fn short_guest_bench_on_the_tiny_rootfs() {
    let _machine = crate::alone();
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("bench.json");
    let svg = t.path().join("bench.svg");
    let out = crate::strata()
        .cmd()
        .args(["bench", "guest", "--rootfs", "tiny", "--runs", "1"])
        .args(["--small", "50", "--seq-mib", "4", "--timeout", "300"])
        .arg("--workdir")
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
    assert!(out.status.success(), "strata bench guest failed");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let skipped = v["skipped"].as_array().unwrap();
    let mut setups = vec!["strata", "erofs", "strata-erofs", "strata-union"];
    if skipped.is_empty() {
        setups.insert(0, "virtiofsd");
    } else {
        eprintln!("SKIP setup (a): {skipped:?}");
        assert!(stdout.contains("skipped: virtiofsd not found"), "{stdout}");
    }
    let summary = v["summary"].as_array().unwrap();
    for s in &setups {
        for w in ["read", "walk", "create", "write", "seqread"] {
            let row = summary
                .iter()
                .find(|x| x["setup"] == *s && x["workload"] == w)
                .unwrap_or_else(|| panic!("no {s} {w} in {summary:?}"));
            assert!(row["median_s"].as_f64().unwrap() > 0.0, "{row}");
            assert_eq!(row["ratio_to_virtiofsd"].is_null(), skipped.len() == 1);
        }
    }
    // Every setup sees the same tiny rootfs: busybox, etc/passwd, etc/group from the base,
    // etc/hostname and etc/old/b from the top (etc/gone is whited out, etc/old is opaque).
    for s in &setups {
        let read = summary
            .iter()
            .find(|x| x["setup"] == *s && x["workload"] == "read")
            .unwrap();
        assert_eq!(read["count"], 5, "{read}");
    }
    let ops = &v["opstats"]["run1"];
    assert!(ops["readdirplus"].as_u64().unwrap_or(0) > 0, "{ops}");
    assert!(ops["open"].as_u64().unwrap_or(0) > 0, "{ops}");
    assert!(
        stdout.contains("FUSE requests served by strata"),
        "{stdout}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("virtiofsd"), "no plot");
}

/// Setup (e) runs create/write/seqread in the served upper itself: the guest sends FUSE CREATE
/// (its overlayfs never does, it makes MKNOD + OPEN), and a workload that needs the image is
/// refused before anything boots.
#[test]
fn setup_e_times_the_served_upper_without_a_guest_overlay() {
    let _machine = crate::alone();
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("bench.json");
    let bench = |extra: &[&str]| {
        crate::strata()
            .cmd()
            .args(["bench", "guest", "--rootfs", "tiny", "--runs", "1"])
            .args(["--small", "50", "--seq-mib", "4", "--timeout", "300"])
            .args(["--setup", "strata-upper"])
            .args(extra)
            .arg("--workdir")
            .arg(t.path().join("work"))
            .arg("--output")
            .arg(&json)
            .output()
            .unwrap()
    };
    let refused = bench(&["--workload", "walk"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("times create, write and seqread, not walk"),
        "{stderr}"
    );

    let out = bench(&["--workload", "create", "--workload", "seqread"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "strata bench guest failed");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let summary = v["summary"].as_array().unwrap();
    for w in ["create", "write", "seqread"] {
        let row = summary
            .iter()
            .find(|x| x["setup"] == "strata-upper" && x["workload"] == w)
            .unwrap_or_else(|| panic!("no strata-upper {w} in {summary:?}"));
        assert!(row["median_s"].as_f64().unwrap() > 0.0, "{row}");
    }
    let ops = &v["opstats"]["strata-upper/run1"];
    assert!(ops["create"].as_u64().unwrap_or(0) >= 50, "{ops}");
    // The boot's own overlay mount makes one (its work dir's whiteout); the files made none.
    assert!(ops["mknod"].as_u64().unwrap_or(0) < 50, "{ops}");
}
