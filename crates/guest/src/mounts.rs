//! Mounting: the virtio-fs tag, the overlay built from the plan, moves and the root switch.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot};
use strata_plan::{MountPlan, PLAN_FILE};

use crate::{debug, GuestError};

/// Parent of the staging mounts of `strata guest mount` (`/run/strata/<tag>`).
pub(crate) const STAGING_BASE: &str = "/run/strata";
/// How long to wait for the virtio-fs device (it may be probed a little after its modules load).
pub(crate) const VIRTIOFS_WAIT: Duration = Duration::from_secs(5);
const VIRTIOFS_RETRY_EVERY: Duration = Duration::from_millis(20);
/// Read-ahead of a virtio-fs mount, in KiB. FUSE starts every mount at 128 KiB, so a
/// sequential read of a served file is one READ round trip per 128 KiB although a request may
/// carry 1 MiB (`max_pages` 256 with the VMM's `queue-size=1024`); 1 MiB cuts those round trips
/// by 8 (`strata bench guest --workload seqread --opstats`: 2049 → 257 READs for 256 MiB).
pub(crate) const VIRTIOFS_READAHEAD_KB: u32 = 1024;
/// mount(2) copies at most one page of option data, NUL included.
pub(crate) const MOUNT_DATA_MAX: usize = 4095;
/// How many kernel log lines to show with a mount error.
const KMSG_HINT_LINES: usize = 8;

/// Where `strata guest mount` mounts the tag itself.
pub(crate) fn staging_dir(tag: &str) -> PathBuf {
    Path::new(STAGING_BASE).join(tag)
}

/// A tag must be a valid virtio-fs tag and, since it names the staging directory that ends up
/// in the overlay options, free of the characters overlayfs treats specially.
pub(crate) fn validate_tag(tag: &str) -> Result<(), GuestError> {
    match strata_plan::tag_problem(tag) {
        Some(reason) => Err(GuestError::BadTag {
            tag: tag.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Where the layer device of a plan with a `lower_tag` is mounted (`/run/strata/<tag>.layers`:
/// apart from every tree's staging directory and from init's).
pub(crate) fn lower_staging_dir(tag: &str) -> PathBuf {
    Path::new(STAGING_BASE).join(format!("{tag}.layers"))
}

/// Where the layer block device of a plan with a `lower_block` is mounted
/// (`/run/strata/<tag>.block`).
pub(crate) fn block_staging_dir(tag: &str) -> PathBuf {
    Path::new(STAGING_BASE).join(format!("{tag}.block"))
}

/// The `/dev` node of the virtio-blk device whose serial is `serial`, listed under `sys_block`
/// (`/sys/block`), if there is one now.
pub(crate) fn find_block_by_serial(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("vd"))
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let found = std::fs::read_to_string(sys_block.join(&n).join("serial")).ok()?;
        (found.trim_end_matches(['\n', '\0']) == serial).then(|| Path::new("/dev").join(n))
    })
}

/// Mount the plan's layer block device read-only at `target`, waiting up to `wait` for it
/// to appear.
pub(crate) fn mount_lower_block(
    block: &strata_plan::LowerBlock,
    target: &Path,
    wait: Duration,
) -> Result<(), GuestError> {
    let start = Instant::now();
    let device = loop {
        if let Some(d) = find_block_by_serial(Path::new("/sys/block"), &block.serial) {
            // devtmpfs creates the node right after the disk is added.
            if d.exists() || start.elapsed() >= wait {
                break d;
            }
        } else if start.elapsed() >= wait {
            return Err(GuestError::NoBlockDevice {
                serial: block.serial.clone(),
                waited_ms: start.elapsed().as_millis(),
            });
        }
        std::thread::sleep(VIRTIOFS_RETRY_EVERY);
    };
    let mut kmsg = KmsgWatch::start();
    mount(
        Some(device.as_path()),
        target,
        Some(block.fstype.as_str()),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|errno| GuestError::BlockMount {
        device: device.display().to_string(),
        fstype: block.fstype.clone(),
        target: target.to_path_buf(),
        errno,
        kmsg: kmsg.lines(&[block.fstype.as_str(), "virtio_blk"], KMSG_HINT_LINES),
    })
}

/// `mkdir -p`.
pub(crate) fn mkdir_p(path: &Path) -> Result<(), GuestError> {
    std::fs::create_dir_all(path).map_err(|source| GuestError::Mkdir {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether `target` is a mount point according to `/proc/self/mounts` (false if /proc is not
/// mounted yet).
pub(crate) fn is_mounted(target: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let Some(target) = target.to_str() else {
        return false;
    };
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(target))
}

/// Watches the kernel log from "now" on, to show what the kernel said about a failed mount
/// (overlayfs and virtio-fs explain their refusals only there).
pub(crate) struct KmsgWatch(Option<File>);

impl KmsgWatch {
    /// Start watching; silently does nothing if `/dev/kmsg` is unavailable.
    pub(crate) fn start() -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()
            .and_then(|mut f| f.seek(SeekFrom::End(0)).ok().map(|_| f));
        KmsgWatch(file)
    }

    /// The last `max` messages logged since [`KmsgWatch::start`] that contain any of `patterns`.
    pub(crate) fn lines(&mut self, patterns: &[&str], max: usize) -> Vec<String> {
        let Some(file) = self.0.as_mut() else {
            return Vec::new();
        };
        let mut records = Vec::new();
        let mut buf = vec![0u8; 8192];
        // Each read returns one record; EAGAIN at the end, EPIPE if records were overwritten.
        for _ in 0..100_000 {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => records.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if e.kind() == ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(_) => break,
            }
        }
        matching_messages(records.iter().map(String::as_str), patterns, max)
    }
}

/// The message text of one `/dev/kmsg` record (`prio,seq,usec,flags;text\n KEY=value...`).
pub(crate) fn kmsg_message(record: &str) -> Option<&str> {
    let (_, rest) = record.split_once(';')?;
    let text = rest.lines().next().unwrap_or("").trim_end();
    (!text.is_empty()).then_some(text)
}

/// The last `max` distinct messages among `records` that contain any of `patterns` (a repeated
/// message, e.g. one per mount retry, is kept once, at its last position).
pub(crate) fn matching_messages<'a>(
    records: impl Iterator<Item = &'a str>,
    patterns: &[&str],
    max: usize,
) -> Vec<String> {
    let mut hits: Vec<String> = Vec::new();
    for m in records
        .filter_map(kmsg_message)
        .filter(|m| patterns.iter().any(|p| m.contains(p)))
    {
        hits.retain(|h| h != m);
        hits.push(m.to_string());
    }
    let skip = hits.len().saturating_sub(max);
    hits.drain(..skip);
    hits
}

/// Mount virtio-fs `tag` at `target`, retrying for up to `wait` while the device or the
/// filesystem type is not there yet.
pub(crate) fn mount_virtiofs(tag: &str, target: &Path, wait: Duration) -> Result<(), GuestError> {
    let mut kmsg = KmsgWatch::start();
    let start = Instant::now();
    loop {
        match mount(
            Some(tag),
            target,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) => {
                set_readahead(target, VIRTIOFS_READAHEAD_KB);
                return Ok(());
            }
            // ENODEV: virtiofs not registered yet; EINVAL/ENOENT/ENXIO: no device with this tag yet.
            Err(Errno::ENODEV | Errno::EINVAL | Errno::ENOENT | Errno::ENXIO)
                if start.elapsed() < wait =>
            {
                std::thread::sleep(VIRTIOFS_RETRY_EVERY);
            }
            Err(errno) => {
                return Err(GuestError::Virtiofs {
                    tag: tag.to_string(),
                    target: target.to_path_buf(),
                    errno,
                    waited_ms: start.elapsed().as_millis(),
                    kmsg: kmsg.lines(
                        &["virtio-fs", "virtiofs", "virtio_fs", "fuse"],
                        KMSG_HINT_LINES,
                    ),
                });
            }
        }
    }
}

/// Set the read-ahead of the filesystem mounted at `target` (its backing device info, named
/// `MAJOR:MINOR` of the mount's `st_dev` for FUSE). Best effort: a kernel without the knob
/// keeps its default, which is slower, not wrong.
pub(crate) fn set_readahead(target: &Path, kb: u32) {
    let dev = match nix::sys::stat::stat(target) {
        Ok(st) => st.st_dev,
        Err(e) => {
            debug!("strata: read-ahead of {} unchanged: {e}", target.display());
            return;
        }
    };
    let knob = bdi_readahead_knob(dev);
    if let Err(e) = std::fs::write(&knob, format!("{kb}\n")) {
        debug!("strata: read-ahead unchanged ({}: {e})", knob.display());
    }
}

/// `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb` of the device number `dev`.
pub(crate) fn bdi_readahead_knob(dev: u64) -> PathBuf {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
}

/// Read and validate `<root>/plan.json`.
pub(crate) fn read_plan(root: &Path) -> Result<MountPlan, GuestError> {
    let path = root.join(PLAN_FILE);
    let bytes = std::fs::read(&path).map_err(|source| GuestError::ReadPlan {
        path: path.clone(),
        source,
    })?;
    MountPlan::from_json(&bytes).map_err(|source| GuestError::Plan { path, source })
}

/// The overlay mount data for the tree mounted at `root` and its layers at `lower_root`,
/// checked against the mount(2) limit.
pub(crate) fn overlay_data(
    plan: &MountPlan,
    root: &Path,
    lower_root: &Path,
) -> Result<String, GuestError> {
    fn utf8(p: &Path) -> Result<&str, GuestError> {
        p.to_str().ok_or_else(|| GuestError::NonUtf8Path {
            path: p.to_path_buf(),
        })
    }
    let data = plan.overlay_options_with(utf8(root)?, utf8(lower_root)?);
    if data.len() > MOUNT_DATA_MAX {
        return Err(GuestError::OverlayOptionsTooLong {
            len: data.len(),
            max: MOUNT_DATA_MAX,
            layers: plan.lowers.len(),
        });
    }
    Ok(data)
}

/// Mount the overlay described by `plan` (paths relative to `root`, the tree of tag `tag`) at
/// `target`. A plan with a `lower_tag` has its layers on that second device, one with a
/// `lower_block` on that block device: it is mounted first ([`lower_staging_dir`],
/// [`block_staging_dir`]), and unmounted again if the overlay fails.
pub(crate) fn mount_overlay(
    plan: &MountPlan,
    tag: &str,
    root: &Path,
    target: &Path,
) -> Result<(), GuestError> {
    if let Some(dir) = &plan.rootfs {
        // Merged by the daemon: the tree's directory is the root as it is.
        let from = root.join(dir);
        return mount(
            Some(&from),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|errno| GuestError::BindRoot {
            from,
            to: target.to_path_buf(),
            errno,
        });
    }
    let lower_root = match (&plan.lower_block, &plan.lower_tag) {
        (Some(block), _) => {
            let dir = block_staging_dir(tag);
            mkdir_p(&dir)?;
            mount_lower_block(block, &dir, VIRTIOFS_WAIT)?;
            dir
        }
        (None, None) => root.to_path_buf(),
        (None, Some(lower)) => {
            validate_tag(lower)?;
            if lower == tag {
                return Err(GuestError::BadTag {
                    tag: lower.clone(),
                    reason: "the plan's lower_tag must name a second device, not the tree's own",
                });
            }
            let dir = lower_staging_dir(lower);
            mkdir_p(&dir)?;
            mount_virtiofs(lower, &dir, VIRTIOFS_WAIT)?;
            dir
        }
    };
    let result = overlay_data(plan, root, &lower_root).and_then(|data| {
        let mut kmsg = KmsgWatch::start();
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|errno| GuestError::Overlay {
            target: target.to_path_buf(),
            errno,
            kmsg: kmsg.lines(&["overlayfs"], KMSG_HINT_LINES),
            options: data,
        })
    });
    if result.is_err() && (plan.lower_tag.is_some() || plan.lower_block.is_some()) {
        let _ = nix::mount::umount(&lower_root);
    }
    result
}

/// `mount --move from to`.
pub(crate) fn move_mount(from: &Path, to: &Path) -> Result<(), GuestError> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|errno| {
        GuestError::MoveMount {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            errno,
        }
    })
}

/// Make the mount at `newroot` the root, the way `switch_root` does it for an initramfs (whose
/// rootfs cannot be `pivot_root`ed away): `chdir newroot; mount --move . /; chroot .; chdir /`.
pub(crate) fn switch_root(newroot: &Path) -> Result<(), GuestError> {
    let fail = |step: &'static str| {
        move |errno| GuestError::SwitchRoot {
            newroot: newroot.to_path_buf(),
            step,
            errno,
        }
    };
    chdir(newroot).map_err(fail("chdir to the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(fail("mount --move . /"))?;
    chroot(".").map_err(fail("chroot ."))?;
    chdir("/").map_err(fail("chdir /"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for ok in ["strata", "rootfs-1", "a_b.c", "x".repeat(36).as_str()] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a,b",
            "a:b",
            "a b",
            "a\\b",
            "\u{e9}",
            "x".repeat(37).as_str(),
        ] {
            assert!(
                matches!(validate_tag(bad), Err(GuestError::BadTag { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn staging_is_per_tag() {
        assert_eq!(staging_dir("strata"), Path::new("/run/strata/strata"));
        assert_eq!(
            lower_staging_dir("strata-lower"),
            Path::new("/run/strata/strata-lower.layers")
        );
        let plan = MountPlan::merged().with_lower_tag("strata-lower");
        assert_eq!(
            overlay_data(&plan, &staging_dir("s"), &lower_staging_dir("strata-lower")).unwrap(),
            "lowerdir=/run/strata/strata-lower.layers/lower,upperdir=/run/strata/s/upper,\
             workdir=/run/strata/s/work,index=off,redirect_dir=off,metacopy=off"
        );
    }

    #[test]
    fn overlay_data_for_init_and_mount() {
        let plan = MountPlan::standard(2);
        assert_eq!(
            overlay_data(&plan, Path::new("/run/strata/fs"), Path::new("/run/strata/fs")).unwrap(),
            "lowerdir=/run/strata/fs/layers/0:/run/strata/fs/layers/1,upperdir=/run/strata/fs/upper,\
             workdir=/run/strata/fs/work,index=off,redirect_dir=off,metacopy=off"
        );
        assert_eq!(
            overlay_data(
                &MountPlan::standard(1),
                &staging_dir("mytag"),
                &staging_dir("mytag")
            )
            .unwrap(),
            "lowerdir=/run/strata/mytag/layers/0,upperdir=/run/strata/mytag/upper,\
             workdir=/run/strata/mytag/work,index=off,redirect_dir=off,metacopy=off"
        );
    }

    #[test]
    fn overlay_data_respects_the_page_limit() {
        // ~27 bytes per layer: 120 layers fit, 200 do not.
        let fs = Path::new("/run/strata/fs");
        assert!(overlay_data(&MountPlan::standard(120), fs, fs).is_ok());
        match overlay_data(&MountPlan::standard(200), fs, fs) {
            Err(GuestError::OverlayOptionsTooLong { len, max, layers }) => {
                assert!(len > max);
                assert_eq!(layers, 200);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn readahead_knob_names_the_bdi() {
        let dev = nix::sys::stat::makedev(0, 42);
        assert_eq!(
            bdi_readahead_knob(dev),
            Path::new("/sys/class/bdi/0:42/read_ahead_kb")
        );
    }

    #[test]
    fn block_devices_by_serial() {
        let sys = tempfile::tempdir().unwrap();
        for (n, serial) in [
            ("vda", "other\n"),
            ("vdb", "strata-lower"),
            ("sda", "strata-lower"),
        ] {
            std::fs::create_dir(sys.path().join(n)).unwrap();
            std::fs::write(sys.path().join(n).join("serial"), serial).unwrap();
        }
        std::fs::create_dir(sys.path().join("vdc")).unwrap();
        assert_eq!(
            find_block_by_serial(sys.path(), "strata-lower"),
            Some(PathBuf::from("/dev/vdb"))
        );
        assert_eq!(find_block_by_serial(sys.path(), "none"), None);
        assert_eq!(find_block_by_serial(&sys.path().join("x"), "other"), None);
        assert_eq!(
            block_staging_dir("strata"),
            Path::new("/run/strata/strata.block")
        );
    }

    #[test]
    fn kmsg_records() {
        assert_eq!(
            kmsg_message("4,512,1234567,-;overlayfs: failed to set xattr on upper\n SUBSYSTEM=x\n"),
            Some("overlayfs: failed to set xattr on upper")
        );
        assert_eq!(kmsg_message("6,1,2,-;\n"), None);
        assert_eq!(kmsg_message("garbage"), None);
        let records = [
            "6,1,0,-;overlayfs: old\n",
            "6,2,0,-;virtio-fs: tag <x> not found\n",
            "4,3,0,-;overlayfs: upper fs does not support tmpfile.\n",
            "3,4,0,-;overlayfs: failed to verify upper root origin\n",
            "6,5,0,-;virtio-fs: tag <x> not found\n",
        ];
        assert_eq!(
            matching_messages(records.into_iter(), &["overlayfs"], 2),
            [
                "overlayfs: upper fs does not support tmpfile.",
                "overlayfs: failed to verify upper root origin"
            ]
        );
        assert_eq!(
            matching_messages(records.into_iter(), &["virtio-fs"], 8),
            ["virtio-fs: tag <x> not found"]
        );
    }

    #[test]
    fn plan_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        match read_plan(dir.path()) {
            Err(e @ GuestError::ReadPlan { .. }) => {
                assert!(e.to_string().contains("plan.json"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.path().join(PLAN_FILE), b"{\"version\": 7}").unwrap();
        assert!(matches!(
            read_plan(dir.path()),
            Err(GuestError::Plan { .. })
        ));
        std::fs::write(dir.path().join(PLAN_FILE), MountPlan::standard(3).to_json()).unwrap();
        assert_eq!(read_plan(dir.path()).unwrap(), MountPlan::standard(3));
    }
}
