//! pjdfstest (the Rust rewrite) as root in a Debian 6.1 guest, in a new directory on the
//! container rootfs, on strata with one device, with the layer device and with the root merged
//! by the daemon (`--union`): every failing case must be one that virtiofsd over a host overlay
//! (the Kata-style setup) fails too, or, with a guest overlay, the hard-link class documented
//! in docs/conformance.md (`--union` has no guest overlay, so not even that). Runs the whole suite (~400 cases, about
//! 30 s per setup under TCG); `scripts/conformance` runs the same with setup (a) and prints
//! the table.
//!
//! Needs root, qemu-system-x86_64, busybox-static and pjdfstest (`scripts/install-deps.sh`).

use std::collections::BTreeMap;

/// Cases that fail on (a) virtiofsd + host overlay too: every `::char` case (pjdfstest's char
/// nodes are 0:0, which overlayfs refuses to create, EPERM, since that is its whiteout), and
/// three that need what the minimal rootfs lacks (ENOENT in their setup).
fn fails_on_a_too(name: &str) -> bool {
    name.ends_with("::char")
        || matches!(name, "open::etxtbsy" | "truncate::etxtbsy" | "rmdir::ebusy")
}

/// The guest overlayfs-over-FUSE hard-link class (docs/conformance.md): after the first name
/// of a multiply-linked upper file is unlinked or renamed over, the other names give ESTALE.
fn hard_link_class(name: &str) -> bool {
    [
        "link::remove_link::",
        "rename::to_multiply_linked::",
        "unlink::update_ctime_success::",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

#[test]
fn pjdfstest_fails_nothing_the_kata_style_setup_passes() {
    let _machine = crate::alone();
    strata_harness::require(&["qemu-system-x86_64", "busybox"]);
    assert!(
        strata_lab::guest_bench::pjdfstest_binary().is_ok(),
        "pjdfstest is missing: run scripts/install-deps.sh (as root)"
    );
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let out = crate::strata()
        .cmd()
        .args(["bench", "guest", "--rootfs", "conformance", "--runs", "1"])
        .args(["--workload", "pjdfstest", "--timeout", "900"])
        .args(["--setup", "strata-layers", "--setup", "strata"])
        .args(["--setup", "strata-union"])
        .arg("--workdir")
        .arg(&work)
        .output()
        .unwrap();
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "strata bench guest failed");
    for setup in ["strata-layers", "strata", "strata-union"] {
        let log = std::fs::read_to_string(work.join(format!("{setup}-1/console.log"))).unwrap();
        let mut results: BTreeMap<&str, &str> = BTreeMap::new();
        for l in log.lines() {
            let Some(i) = l.find("@pjd ") else { continue };
            let mut f = l[i + 5..].split_whitespace();
            if let (Some(n), Some(r)) = (f.next(), f.next()) {
                results.insert(n, r);
            }
        }
        let count = |r: &str| results.values().filter(|x| **x == r).count();
        eprintln!(
            "{setup}: {} passed, {} failed, {} skipped",
            count("ok"),
            count("FAILED"),
            count("skipped")
        );
        assert!(
            results.len() > 300,
            "{setup}: only {} cases ran",
            results.len()
        );
        let unexplained: Vec<&str> = results
            .iter()
            .filter(|(n, r)| {
                **r == "FAILED"
                    && !fails_on_a_too(n)
                    && (setup == "strata-union" || !hard_link_class(n))
            })
            .map(|(n, _)| *n)
            .collect();
        assert!(
            unexplained.is_empty(),
            "{setup}: pjdfstest cases failing that (a) passes: {unexplained:#?}"
        );
        // The fixes stay fixed: modes masked once (umask), device nodes allowed.
        for n in [
            "open::permission_bits_from_mode",
            "mkdir::permission_bits_from_mode",
            "mknod::permission_bits_from_mode",
            "mkfifo::permission_bits_from_mode",
            "chmod::change_perm::block",
            "mknod::privileged::eexist_file_exists::block",
        ] {
            assert_eq!(results.get(n), Some(&"ok"), "{setup}: {n}");
        }
    }
}
