//! `strata bench sessions` and a short `strata bench soak` against a real, confined
//! `strata daemon` process, driven by vhost-user frontends (no VM): every session serves real
//! FUSE requests, none fails, and after the sessions end the daemon is back to its idle fds.
//! `strata bench requests` replays each setup's requests per created file against real
//! `strata serve` processes (and virtiofsd, if installed) and checks every answer.
//! Memory numbers are printed, never asserted (they are benchmarks).

#[test]
fn sessions_come_and_go_without_leaving_fds() {
    let _machine = crate::alone();
    let r = crate::strata().run([
        "bench",
        "sessions",
        "--sessions",
        "1",
        "--sessions",
        "10",
        "--json",
    ]);
    let (out, err) = (r.stdout.as_str(), r.stderr.as_str());
    assert!(r.ok(), "{out}{err}");
    let v: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v.len(), 4, "idle, 1, 10, after: {out}");
    let fds = |i: usize| v[i]["fds"].as_u64().unwrap();
    assert!(fds(2) > fds(1), "10 sessions hold more than 1: {out}");
    // After every session ended: the idle fds, plus this client's API connection.
    assert!(
        fds(3) <= fds(0) + 2,
        "fds left after the sessions ended: {out}"
    );
    eprintln!("{err}");
}

#[test]
fn short_soak_has_no_errors() {
    let _machine = crate::alone();
    let r = crate::strata().run([
        "bench",
        "soak",
        "--sessions",
        "3",
        "--seconds",
        "6",
        "--interval-ms",
        "500",
    ]);
    let (out, err) = (r.stdout.as_str(), r.stderr.as_str());
    assert!(r.ok(), "{out}{err}");
    assert!(out.contains(", 0 errors"), "{out}");
    // The daemon's CPU per request, and with the 3 sessions connected but idle.
    assert!(out.contains("µs per request"), "{out}");
    let idle: f64 = out
        .split("% of a core with 3 sessions connected and idle")
        .next()
        .and_then(|head| head.rsplit(' ').find(|w| !w.is_empty()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no idle CPU line: {out}"));
    // Idle sessions must not keep a worker polling: a spinning one would be ~100 %.
    assert!(idle < 20.0, "idle daemon used {idle} % of a core: {out}");
    eprintln!("{out}");
}

#[test]
fn request_replay_gets_the_answers_a_guest_kernel_expects() {
    let _machine = crate::alone();
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("requests.svg");
    let r = crate::strata().run([
        "bench",
        "requests",
        "--files",
        "300",
        "--round-trips",
        "100",
        "--runs",
        "1",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let (out, err) = (r.stdout.as_str(), r.stderr.as_str());
    // Each request's answer is checked by the bench itself (a negative LOOKUP, ENODATA for
    // an absent xattr, success for the rest): any other answer fails the command.
    assert!(r.ok(), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let summary = v["summary"].as_array().unwrap();
    let per_item = |setup: &str, workload: &str| {
        summary
            .iter()
            .find(|s| s["setup"] == setup && s["workload"] == workload)
            .unwrap_or_else(|| panic!("no {setup} {workload} in {out}"))["requests_per_item"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(per_item("strata", "create"), 8, "{out}");
    assert_eq!(per_item("strata-union", "create"), 5, "{out}");
    assert_eq!(per_item("strata", "append"), 3, "{out}");
    assert_eq!(per_item("strata-union", "append"), 1, "{out}");
    if summary.iter().any(|s| s["setup"] == "virtiofsd") {
        assert_eq!(per_item("virtiofsd", "create"), 5, "{out}");
        assert_eq!(per_item("virtiofsd", "append"), 1, "{out}");
    } else {
        assert!(err.contains("skipped: virtiofsd not found"), "{err}");
    }
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.contains("<svg") && drawn.contains("MKNOD"), "no plot");
    eprintln!("{err}");
}
