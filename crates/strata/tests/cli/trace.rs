//! `strata trace` on this host: `--check` gives a verdict (one JSON line with `--json`), and
//! tracing says why it cannot run here or reports. Given files (`--kallsyms`, `--btf`) are read
//! alone, never mixed with the running kernel's: a stub System.map, an unreadable file or two
//! kernels' files are refused (exit code 2) with no verdict; `--exit-code` is 5 on an exposed
//! kernel. Inside guest kernels: the VM tests.

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

/// Debian's System.map (the real one is in the -dbg package).
const STUB: &str =
    "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n";
/// The shrinker lines of a Debian 6.1 System.map (KALLSYMS_ALL), and `_stext`.
const MAP_61: &str = "ffffffff81000000 T _stext
ffffffff8125b9c0 T prealloc_shrinker
ffffffff8125ba20 T register_shrinker_prepared
ffffffff8125ba80 T register_shrinker
ffffffff8125bb00 T unregister_shrinker
ffffffff8125bbc0 T free_prealloced_shrinker
ffffffff8125e0f0 t shrink_slab
ffffffff82b5f8a0 D shrinker_rwsem
";

fn check_with(args: &[&str]) -> std::process::Output {
    crate::strata()
        .cmd()
        .args(["trace", "--check"])
        .args(args)
        .output()
        .unwrap()
}

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// The case that once answered "lockless": a Debian 6.1 System.map stub, and with it (or
/// instead of it) the running kernel's BTF.
#[test]
fn a_stub_system_map_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let stub = file(&d, "System.map-6.1.0-57-cloud-amd64", STUB);
    let out = check_with(&["--kallsyms", &stub]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no kernel symbols") && err.contains("-dbg"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no verdict: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let btf = "/sys/kernel/btf/vmlinux";
    if std::path::Path::new(btf).exists() {
        let out = check_with(&["--kallsyms", &stub, "--btf", btf, "--json"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
    }
    let out = check_with(&["--kallsyms", "/nonexistent/System.map"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/System.map"));
}

/// Given files decide alone: a 6.1 symbol table says rwsem on any host (this one runs 6.18),
/// with --exit-code 5; the running kernel's BTF is not read.
#[test]
fn a_given_symbol_table_decides_alone() {
    let d = tempfile::tempdir().unwrap();
    let map = file(&d, "System.map", MAP_61);
    let out = check_with(&["--kallsyms", &map, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v = check_json(&out.stdout);
    assert_eq!(v["shrinker_lock"], "rwsem", "{v}");
    assert!(
        v["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["source"] == "kallsyms"),
        "{v}"
    );
    let out = check_with(&["--kallsyms", &map, "--exit-code"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exposed"));
    // --kallsyms and --btf only go with --check: tracing is of the running kernel.
    let out = crate::strata()
        .cmd()
        .args(["trace", "--kallsyms", &map, "--duration", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// A 6.1 symbol table with a 6.7+ kernel's BTF (this host's): two kernels, no verdict.
#[test]
fn another_kernels_btf_is_refused() {
    let btf = "/sys/kernel/btf/vmlinux";
    let host = check_with(&["--btf", btf, "--json"]);
    if host.status.code() != Some(0) || check_json(&host.stdout)["shrinker_lock"] != "lockless" {
        eprintln!("SKIP: needs a lockless (6.7+) host with BTF");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let map = file(&d, "System.map", MAP_61);
    let out = check_with(&["--kallsyms", &map, "--btf", btf]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not from the same kernel"), "{err}");
}
