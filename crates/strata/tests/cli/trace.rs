//! `strata trace` on this host: `--check` gives a verdict (one JSON line with `--json`), and
//! tracing says why it cannot run here or reports. Inside guest kernels: the VM tests.

fn check_json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {}",
            String::from_utf8_lossy(out)
        )
    })
}

/// On the host: a verdict whenever the kernel has BTF, one JSON line with --json, and the human
/// form leads with the verdict.
#[test]
fn host_check() {
    let out = crate::strata()
        .cmd()
        .args(["trace", "--check", "--json"])
        .output()
        .unwrap();
    let v = check_json(&out.stdout);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let lock = v["shrinker_lock"].as_str().unwrap().to_string();
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        assert_ne!(lock, "unknown", "{v}");
        assert!(out.status.success());
    }
    let text = crate::strata()
        .cmd()
        .args(["trace", "--check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with(&format!("shrinker lock: {lock}")),
        "{text}"
    );
    assert!(text.contains("what to do:"), "{text}");
}

#[test]
fn tracing_a_second() {
    let out = crate::strata()
        .cmd()
        .args(["trace", "--duration", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        // Not root, or a kernel without the lock (6.7+, like this host's 6.18): nothing to trace.
        Some(2) => assert!(err.contains("lockless") || err.contains("root"), "{err}"),
        // A kernel with shrinker_rwsem (Debian 12's own 6.1): a report.
        Some(0) => assert!(text.contains("shrinker lock: shrinker_rwsem"), "{text}"),
        // No tracefs here (e.g. a container): said so, nothing traced.
        Some(1) if err.contains("tracefs") || err.contains("trace_pipe") => {
            eprintln!("SKIP: {err}")
        }
        _ => panic!("{:?}: {err}", out.status),
    }
}
