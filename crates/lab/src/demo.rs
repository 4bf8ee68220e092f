//! `strata demo`: the whole data path in one command, on an image strata builds itself.
//!
//! 1. a two-layer image in the kernel overlayfs format (busybox-static + a few files; the top
//!    layer deletes one file with a whiteout);
//! 2. `strata serve` for one VM (under `strace -f`, to count its mount-family syscalls);
//! 3. a Debian 6.1 guest under qemu whose initramfs /init is `strata guest init`: it mounts the
//!    virtio-fs tag, assembles the overlay with the guest kernel and runs the container command;
//! 4. what the guest saw, what landed in the upper dir, and the measured host mount count.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Result;
use strata_harness::fixture;
use strata_harness::session::{host_mount_count, ServeProcess, ServeSpec};
use strata_vm::kernel::{GuestKernel, KernelChoice};
use strata_vm::qemu::VmConfig;
use strata_vm::VmError;

/// The container command of the demo (runs in the guest, in the assembled rootfs).
const START_SH: &str = r#"echo "container: kernel $(uname -r), rootfs is $(grep ' / ' /proc/mounts | cut -d' ' -f1-3)"
echo "container: /etc/motd says: $(cat /etc/motd)"
echo "container: /app/version (top layer): $(cat /app/version)"
if [ -e /sys/block/vda/serial ]; then echo "container: the layers are on /dev/vda (serial $(cat /sys/block/vda/serial), read-only: $(cat /sys/block/vda/ro))"; fi
if [ -e /etc/obsolete.conf ]; then echo "container: /etc/obsolete.conf is visible (wrong)"; else echo "container: /etc/obsolete.conf is gone (whiteout in the top layer)"; fi
echo "written inside the VM at $(date -u +%H:%M:%S)" > /root/hello.txt
echo "more" >> /etc/motd
rm /app/remove-me
echo "container: wrote /root/hello.txt, appended to /etc/motd, removed /app/remove-me"
"#;

fn write(path: &Path, data: &str) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(VmError::io("cannot create directory", p))?;
    }
    std::fs::write(path, data).map_err(VmError::io("cannot write", path))
}

/// Build the demo image: returns its layers, topmost first.
pub fn build_image(dir: &Path) -> Result<Vec<PathBuf>> {
    let bottom = dir.join("image/layer-1-base");
    let top = dir.join("image/layer-2-app");
    fixture::busybox_rootfs(&bottom)?;
    write(&bottom.join("etc/motd"), "hello from the base layer\n")?;
    write(
        &bottom.join("etc/obsolete.conf"),
        "deleted by the top layer\n",
    )?;
    write(&bottom.join("app/remove-me"), "the container deletes me\n")?;
    write(&top.join("app/version"), "strata-demo 1.0\n")?;
    write(&top.join("app/start.sh"), START_SH)?;
    let etc = top.join("etc");
    std::fs::create_dir_all(&etc).map_err(VmError::io("cannot create directory", &etc))?;
    fixture::whiteout(&etc.join("obsolete.conf"))?;
    Ok(vec![top, bottom])
}

/// Everything below `upper`, one line each, whiteouts and opaque dirs named as such.
pub fn describe_upper(upper: &Path) -> String {
    fn walk(base: &Path, dir: &Path, out: &mut String) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() && m.rdev() == 0 {
                let _ = writeln!(out, "  /{rel}  (whiteout: deleted in the container)");
            } else if ft.is_dir() {
                let _ = writeln!(out, "  /{rel}/");
                walk(base, &p, out);
            } else if ft.is_file() {
                let _ = writeln!(out, "  /{rel}  ({} bytes)", m.len());
            } else {
                let _ = writeln!(out, "  /{rel}");
            }
        }
    }
    let mut s = String::new();
    walk(upper, upper, &mut s);
    s
}

/// Run the demo in `dir` with the static `strata` binary at `strata`; with `erofs`, the guest
/// reads the layers from their merged EROFS image on a read-only virtio-blk disk instead of the
/// layer device (`strata serve --lower-block`).
pub fn run(strata: &Path, dir: &Path, erofs: bool) -> Result<bool> {
    let step = |n: u32, what: &str| eprintln!("\n[{n}/5] {what}");
    let t_all = Instant::now();

    step(
        1,
        "building a two-layer image (busybox-static + files; top layer deletes /etc/obsolete.conf)",
    );
    let lowers = build_image(dir)?;
    let upper = dir.join("container/upper");
    let work = dir.join("container/work");
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(VmError::io("cannot create directory", d))?;
    }

    step(2, "fetching the Debian 6.1 guest kernel (cached after the first run) and building the initramfs");
    let kernel = GuestKernel::fetch(KernelChoice::Debian6_1)?;
    let initrd = dir.join("initrd.cpio");
    strata_vm::initramfs::guest_initramfs(strata, &kernel, &initrd)?;
    eprintln!(
        "      kernel {} ; initramfs = static strata binary as /init + virtio/fuse/overlay modules",
        kernel.release
    );

    let image = if erofs {
        let t = Instant::now();
        let img = crate::guest_bench::merged_erofs_image(&lowers, &dir.join("erofs"))?;
        eprintln!(
            "      merged EROFS image of both layers (whiteout applied): {} ({} KiB, {:.2} s, mkfs.erofs)",
            img.display(),
            std::fs::metadata(&img).map(|m| m.len() / 1024).unwrap_or(0),
            t.elapsed().as_secs_f64()
        );
        Some(img)
    } else {
        None
    };

    step(
        3,
        if erofs {
            "starting `strata serve --lower-block` for the upper (under strace -f, counting mount-family syscalls)"
        } else {
            "starting `strata serve` and its layer device (under strace -f, counting mount-family syscalls)"
        },
    );
    let spec = ServeSpec {
        lowers: lowers.clone(),
        upper: upper.clone(),
        work: work.clone(),
        socket: dir.join("strata.sock"),
        tag: "strata".into(),
        lower: (!erofs).then(|| {
            (
                dir.join("layers.sock"),
                strata_serve::DEFAULT_LOWER_TAG.into(),
            )
        }),
        union: false,
    };
    let use_strace = strata_vm::qemu::find_in_path("strace").is_some();
    let strace_log = dir.join("serve.strace");
    let mounts_before = host_mount_count();
    let serve_log = dir.join("serve.log");
    let strace = use_strace.then_some(strace_log.as_path());
    let serve = if erofs {
        let argv = crate::guest_bench::serve_lower_block_argv(
            strata,
            &spec.socket,
            &lowers,
            &upper,
            &work,
            strata_plan::DEFAULT_LOWER_SERIAL,
        );
        ServeProcess::spawn_argv(
            &argv,
            std::slice::from_ref(&spec.socket),
            strace,
            &serve_log,
        )?
    } else {
        ServeProcess::spawn(strata, &spec, strace, &serve_log)?
    };
    eprintln!(
        "      listening on {} after {:.1} ms",
        spec.socket.display(),
        serve.ready_after.as_secs_f64() * 1e3
    );

    step(4, "booting the guest (qemu TCG): strata guest init mounts virtio-fs, builds the overlay, runs /app/start.sh");
    let mut vm = VmConfig {
        cmdline: "strata.tag=strata strata.cmd=\"/bin/sh /app/start.sh\"".into(),
        virtiofs: spec.devices(),
        timeout: Duration::from_secs(180),
        ..VmConfig::new(&kernel.vmlinuz, &initrd)
    };
    if let Some(img) = &image {
        vm.extra_args.extend(strata_vm::qemu::read_only_disk_args(
            img,
            strata_plan::DEFAULT_LOWER_SERIAL,
        ));
    }
    let vm_start = Instant::now();
    let first_container_line = std::sync::Arc::new(std::sync::Mutex::new(None::<Duration>));
    let seen = first_container_line.clone();
    let out = vm.run_with(move |line| {
        if line.starts_with("container:") || line.starts_with("strata:") {
            eprintln!("      guest| {line}");
        }
        if line.starts_with("container:") {
            if let Ok(mut s) = seen.lock() {
                s.get_or_insert(vm_start.elapsed());
            }
        }
    })?;
    let boot_to_command = first_container_line.lock().ok().and_then(|s| *s);
    let serve_ready = serve.ready_after;
    let outcome = serve.wait(Duration::from_secs(30))?;
    let mounts_after = host_mount_count();

    step(5, "results");
    let ready_ms = out
        .console
        .lines()
        .find_map(|l| l.split("rootfs ready in ").nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into());
    println!("what the guest saw:");
    for l in out.console.lines().filter(|l| l.starts_with("container:")) {
        println!("  {l}");
    }
    println!(
        "changes in the container's upper dir on the host ({}):",
        upper.display()
    );
    print!("{}", describe_upper(&upper));
    println!(
        "timings: strata serve ready {:.1} ms after spawn{}; guest rootfs ready {ready_ms} after init start; qemu start to first container output {}; VM boot-to-poweroff {:.2} s",
        serve_ready.as_secs_f64() * 1e3,
        if use_strace { " (under strace)" } else { "" },
        boot_to_command.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or_else(|| "?".into()),
        out.elapsed.as_secs_f64()
    );
    let table_delta = mounts_after as i64 - mounts_before as i64;
    let ok = match &outcome.mount_syscalls {
        Some(calls) => {
            println!("host mounts during container start: {} (mount-family syscalls by strata serve, measured with strace -f; host mount table {mounts_before} -> {mounts_after} entries)", calls.len());
            calls.is_empty() && table_delta == 0
        }
        None => {
            println!("host mounts during container start: {table_delta} (change of the host mount table; strace not installed, so the daemon's syscalls were not counted)");
            table_delta == 0
        }
    };
    // With --erofs the guest must have found its disk (the guest init fails the boot
    // otherwise, but say so plainly).
    let on_disk = out
        .console
        .contains("container: the layers are on /dev/vda");
    if erofs && !on_disk {
        println!("the container did not see the EROFS disk");
    }
    let ok = ok && out.status == Some(0) && on_disk == erofs;
    println!(
        "container command exit status: {}; total demo time {:.1} s",
        out.status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none (VM failed)".into()),
        t_all.elapsed().as_secs_f64()
    );
    if !ok {
        eprintln!("demo FAILED; guest console:\n{}", out.console);
    }
    Ok(ok)
}
