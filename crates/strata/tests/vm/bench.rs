//! `strata bench create` end to end (needs root, for the mount strategies): the JSON report has
//! every strategy and phase with the requested sample count, and the directory is left empty.
//! Timings are never asserted.

#[test]
fn json_report_has_every_strategy_and_phase_and_dir_is_left_empty() {
    let _machine = crate::alone();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("bench");
    let out = crate::strata()
        .cmd()
        .args(["bench", "create", "--dir"])
        .arg(&dir)
        .args(["--n", "20", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout:?}"));
    let rows = v["strategies"].as_array().expect("strategies array");
    let mut seen = Vec::new();
    for r in rows {
        let name = r["name"].as_str().expect("name");
        let phase = r["phase"].as_str().expect("phase");
        assert_eq!(r["n"].as_u64(), Some(20), "{r}");
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
        let (p50, p99, p999, max) = (f("p50_ms"), f("p99_ms"), f("p999_ms"), f("max_ms"));
        assert!(p50 >= 0.0, "{r}");
        assert!(p50 <= p99 && p99 <= p999 && p999 <= max, "{r}");
        seen.push(format!("{name}/{phase}"));
    }
    assert_eq!(
        seen,
        [
            "overlay-mount/start",
            "overlay-mount/end",
            "tmpfs-mount/start",
            "tmpfs-mount/end",
            "strata/start",
            "strata/end",
            "strata-daemon/start",
            "strata-daemon/end",
        ]
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind in {dir:?}: {left:?}");
}

#[test]
fn table_for_one_strategy_and_refusals() {
    let _machine = crate::alone();
    let t = tempfile::tempdir().unwrap();
    let out = crate::strata()
        .cmd()
        .args(["bench", "create", "--dir"])
        .arg(t.path())
        .args(["--n", "3", "--strategy", "tmpfs-mount"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].contains("p99.9 ms"), "{table}");
    assert!(lines[1].starts_with("tmpfs-mount") && lines[1].contains("start"));
    assert!(lines[2].starts_with("tmpfs-mount") && lines[2].contains("end"));
    assert!(lines[3].starts_with("tmpfs-mount: ") && lines[3].contains("starts/s"));
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);

    let bad = crate::strata()
        .cmd()
        .args(["bench", "create", "--dir"])
        .arg(t.path())
        .args(["--n", "3", "--strategy", "fuse"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("overlay-mount"));

    // A leftover of an earlier run is not touched, and the error says what to do.
    std::fs::create_dir(t.path().join("upper_0")).unwrap();
    let clash = crate::strata()
        .cmd()
        .args(["bench", "create", "--dir"])
        .arg(t.path())
        .args(["--n", "3", "--strategy", "strata"])
        .output()
        .unwrap();
    assert_eq!(clash.status.code(), Some(1));
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(
        err.contains("upper_0") && err.contains("left over"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["upper_0"]);
}
