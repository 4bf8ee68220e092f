//! Loading the kernel modules shipped in the initramfs, without `depmod` data.
//!
//! The initramfs holds plain `.ko` files (compressed `.ko.xz`/`.ko.zst`/`.ko.gz` are tried too,
//! for kernels with in-kernel decompression) and no dependency information, so modules are
//! loaded in passes: a module whose dependencies are not loaded yet fails ("Unknown symbol" =
//! `ENOENT`) and is retried in the next pass, until everything is loaded or a full pass makes
//! no progress. Modules are tried in path order: strata's own initramfs puts each in a
//! numbered directory (`/lib/modules/NN/name.ko`) in dependency order, so one pass loads all.

use std::ffi::CStr;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// Where the initramfs keeps its modules.
pub const MODULES_DIR: &str = "/lib/modules";

/// `MODULE_INIT_COMPRESSED_FILE` (Linux 5.17+, needs `CONFIG_MODULE_DECOMPRESS`).
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// One module file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Module name as the kernel knows it (file name without `.ko*`, `-` → `_`).
    pub name: String,
    pub path: PathBuf,
    /// The file is compressed (`.ko.xz`, `.ko.zst`, `.ko.gz`): the kernel must decompress it.
    pub compressed: bool,
}

/// The module name and compression of a module file name, or `None` for non-modules.
pub fn module_name(file_name: &str) -> Option<(String, bool)> {
    let (stem, compressed) = if let Some(s) = file_name.strip_suffix(".ko") {
        (s, false)
    } else {
        let s = [".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .find_map(|ext| file_name.strip_suffix(ext))?;
        (s, true)
    };
    if stem.is_empty() {
        return None;
    }
    Some((stem.replace('-', "_"), compressed))
}

/// Every module file under `dir`, recursively (symlinks are not followed), sorted by path.
/// Unreadable directories are skipped and reported in the second list. A missing `dir` is not
/// an error: the kernel may have everything built in.
pub fn discover(dir: &Path) -> (Vec<Module>, Vec<String>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == dir => continue,
            Err(e) => {
                problems.push(format!("cannot read {}: {e}", d.display()));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    problems.push(format!("cannot read {}: {e}", d.display()));
                    continue;
                }
            };
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                if let Some((name, compressed)) = entry.file_name().to_str().and_then(module_name) {
                    found.push(Module {
                        name,
                        path,
                        compressed,
                    });
                }
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    (found, problems)
}

/// Whether a load failure may go away once other modules are loaded.
///
/// * `ENOENT`: "Unknown symbol" (a dependency is not loaded yet).
/// * `EINVAL`: symbol version mismatch, or a dependency's parameters/sysfs not ready.
/// * `EBUSY`/`EAGAIN`: a dependency is still initialising.
///
/// Anything else (`ENOEXEC` bad format, `EPERM`, `ENOMEM`, an init function's own error such
/// as `ENODEV` for absent hardware, ...) will not change and is reported at once.
pub fn is_retryable(e: Errno) -> bool {
    matches!(
        e,
        Errno::ENOENT | Errno::EINVAL | Errno::EBUSY | Errno::EAGAIN
    )
}

/// What happened to each module.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Loaded now, in load order.
    pub loaded: Vec<String>,
    /// Already loaded or built in (`EEXIST`).
    pub present: Vec<String>,
    /// Could not be loaded, with the last error.
    pub failed: Vec<(String, Errno)>,
    /// Number of passes made.
    pub passes: usize,
}

/// Load `modules` with `load`, retrying dependency-style failures ([`is_retryable`]) in further
/// passes until everything is loaded or a whole pass loads nothing. `EEXIST` counts as success.
pub fn load_all<F>(modules: &[Module], mut load: F) -> LoadReport
where
    F: FnMut(&Module) -> Result<(), Errno>,
{
    let mut report = LoadReport::default();
    let mut pending: Vec<&Module> = modules.iter().collect();
    while !pending.is_empty() {
        report.passes += 1;
        let mut progress = false;
        let mut retry = Vec::new();
        for m in pending {
            match load(m) {
                Ok(()) => {
                    report.loaded.push(m.name.clone());
                    progress = true;
                }
                Err(Errno::EEXIST) => {
                    report.present.push(m.name.clone());
                    progress = true;
                }
                Err(e) if is_retryable(e) => retry.push((m, e)),
                Err(e) => report.failed.push((m.name.clone(), e)),
            }
        }
        if !progress {
            report
                .failed
                .extend(retry.into_iter().map(|(m, e)| (m.name.clone(), e)));
            break;
        }
        pending = retry.into_iter().map(|(m, _)| m).collect();
    }
    report
}

/// Load one module file into the running kernel with `finit_module(2)`.
///
/// A module that already has `/sys/module/<name>` (loaded, or built in with parameters) is
/// reported as `EEXIST` without asking the kernel, which would otherwise answer `EINVAL` or
/// `ENOEXEC` for a built-in one.
pub fn load_from_file(m: &Module) -> Result<(), Errno> {
    if Path::new("/sys/module").join(&m.name).exists() {
        return Err(Errno::EEXIST);
    }
    let file =
        File::open(&m.path).map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?;
    let flags = if m.compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    let no_params: &CStr = c"";
    finit_module(&file, no_params, flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn mods(names: &[&str]) -> Vec<Module> {
        names
            .iter()
            .map(|n| Module {
                name: n.to_string(),
                path: format!("/lib/modules/{n}.ko").into(),
                compressed: false,
            })
            .collect()
    }

    /// A fake kernel: each module needs its dependencies loaded first (else ENOENT).
    struct FakeKernel {
        deps: HashMap<&'static str, Vec<&'static str>>,
        loaded: HashSet<String>,
        builtin: HashSet<&'static str>,
        calls: Vec<String>,
    }

    impl FakeKernel {
        fn new(deps: &[(&'static str, &[&'static str])]) -> Self {
            FakeKernel {
                deps: deps.iter().map(|(m, d)| (*m, d.to_vec())).collect(),
                loaded: HashSet::new(),
                builtin: HashSet::new(),
                calls: Vec::new(),
            }
        }

        fn load(&mut self, m: &Module) -> Result<(), Errno> {
            self.calls.push(m.name.clone());
            if self.builtin.contains(m.name.as_str()) || self.loaded.contains(&m.name) {
                return Err(Errno::EEXIST);
            }
            let deps = self.deps.get(m.name.as_str()).cloned().unwrap_or_default();
            if deps
                .iter()
                .all(|d| self.loaded.contains(*d) || self.builtin.contains(d))
            {
                self.loaded.insert(m.name.clone());
                Ok(())
            } else {
                Err(Errno::ENOENT)
            }
        }
    }

    /// The Debian 6.1 cloud kernel set, listed alphabetically (the worst order).
    const DEBIAN: &[(&str, &[&str])] = &[
        ("fuse", &[]),
        ("overlay", &[]),
        ("virtio", &[]),
        (
            "virtio_pci",
            &[
                "virtio",
                "virtio_ring",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
            ],
        ),
        ("virtio_pci_legacy_dev", &[]),
        ("virtio_pci_modern_dev", &[]),
        ("virtio_ring", &[]),
        ("virtiofs", &["fuse", "virtio", "virtio_ring"]),
    ];

    #[test]
    fn loads_in_dependency_order() {
        let names: Vec<&str> = DEBIAN.iter().map(|(n, _)| *n).collect();
        let modules = mods(&names);
        let mut k = FakeKernel::new(DEBIAN);
        let r = load_all(&modules, |m| k.load(m));
        assert!(r.failed.is_empty(), "{r:?}");
        assert_eq!(r.loaded.len(), 8);
        assert_eq!(r.passes, 2);
        assert_eq!(k.loaded.len(), 8);
        let pos = |n: &str| r.loaded.iter().position(|x| x == n).unwrap();
        assert!(pos("virtio_ring") < pos("virtio_pci"));
        assert!(pos("fuse") < pos("virtiofs"));
    }

    #[test]
    fn long_chain_takes_one_pass_per_link() {
        // c needs b needs a, listed c, b, a.
        let modules = mods(&["c", "b", "a"]);
        let mut k = FakeKernel::new(&[("c", &["b"]), ("b", &["a"])]);
        let r = load_all(&modules, |m| k.load(m));
        assert_eq!(r.loaded, ["a", "b", "c"]);
        assert_eq!(r.passes, 3);
        assert!(r.failed.is_empty());
    }

    #[test]
    fn eexist_is_success() {
        let modules = mods(&["virtio", "virtio_ring", "virtio_ring"]);
        let mut k = FakeKernel::new(&[]);
        k.builtin.insert("virtio");
        let r = load_all(&modules, |m| k.load(m));
        assert_eq!(r.loaded, ["virtio_ring"]);
        assert_eq!(r.present, ["virtio", "virtio_ring"]);
        assert!(r.failed.is_empty());
        assert_eq!(r.passes, 1);
    }

    #[test]
    fn stops_when_a_pass_makes_no_progress() {
        let modules = mods(&["a", "needs_missing", "needs_that"]);
        let mut k = FakeKernel::new(&[
            ("needs_missing", &["missing"]),
            ("needs_that", &["needs_missing"]),
        ]);
        let r = load_all(&modules, |m| k.load(m));
        assert_eq!(r.loaded, ["a"]);
        assert_eq!(
            r.failed,
            [
                ("needs_missing".to_string(), Errno::ENOENT),
                ("needs_that".to_string(), Errno::ENOENT)
            ]
        );
        assert_eq!(r.passes, 2);
        // Pass 1: all three; pass 2: the two failing ones, then give up.
        assert_eq!(k.calls.len(), 5);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let modules = mods(&["bad", "user", "dep"]);
        let mut calls = Vec::new();
        let mut dep_loaded = false;
        let r = load_all(&modules, |m| {
            calls.push(m.name.clone());
            match m.name.as_str() {
                "bad" => Err(Errno::ENOEXEC),
                "user" if !dep_loaded => Err(Errno::EINVAL),
                "dep" => {
                    dep_loaded = true;
                    Ok(())
                }
                _ => Ok(()),
            }
        });
        assert_eq!(r.failed, [("bad".to_string(), Errno::ENOEXEC)]);
        assert_eq!(r.loaded, ["dep", "user"]);
        assert_eq!(calls, ["bad", "user", "dep", "user"]);
    }

    #[test]
    fn nothing_to_load() {
        let r = load_all(&[], |_| Ok(()));
        assert_eq!(r, LoadReport::default());
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("virtio_pci.ko"),
            Some(("virtio_pci".into(), false))
        );
        assert_eq!(
            module_name("virtio-rng.ko.xz"),
            Some(("virtio_rng".into(), true))
        );
        assert_eq!(module_name("fuse.ko.zst"), Some(("fuse".into(), true)));
        assert_eq!(module_name("modules.dep"), None);
        assert_eq!(module_name(".ko"), None);
        assert_eq!(module_name("x.ko.bak"), None);
    }

    #[test]
    fn discovers_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let sub = base.join("6.1.0-18-cloud-amd64/kernel/fs/fuse");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("virtiofs.ko"), b"").unwrap();
        std::fs::write(sub.join("fuse.ko"), b"").unwrap();
        std::fs::write(base.join("overlay.ko.xz"), b"").unwrap();
        std::fs::write(base.join("modules.order"), b"").unwrap();
        std::os::unix::fs::symlink(base, sub.join("loop")).unwrap();
        let (found, problems) = discover(base);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["fuse", "virtiofs", "overlay"]);
        assert!(found[2].compressed);

        let (found, problems) = discover(&base.join("missing"));
        assert!(found.is_empty() && problems.is_empty());
    }
}
