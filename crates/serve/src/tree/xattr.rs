//! Extended attributes. Reads pass through (the guest's overlayfs reads `trusted.overlay.*` on
//! layers to find opaque dirs); writes are limited to the writable area and to the namespaces a
//! container rootfs needs.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;

use fuse_backend_rs::api::filesystem::{GetxattrReply, ListxattrReply};

use super::union::is_private_xattr;
use super::{err, Area, HostNode, StrataFs};
use crate::sys::xattr;
use std::sync::Arc;

/// Largest xattr value or list the kernel accepts (XATTR_SIZE_MAX / XATTR_LIST_MAX).
const XATTR_MAX: u32 = 65536;

/// Attribute names the guest kernel probes on its own (overlayfs lookups, VFS capability and ACL
/// checks): request counts (`STRATA_SERVE_OPSTATS`) list getxattr of these by name.
pub(crate) const OVERLAY_PROBES: &[&str] = &[
    "trusted.overlay.opaque",
    "trusted.overlay.redirect",
    "trusted.overlay.metacopy",
    "trusted.overlay.origin",
    "trusted.overlay.impure",
    "trusted.overlay.nlink",
    "trusted.overlay.upper",
    "trusted.overlay.protattr",
    "security.capability",
    "security.selinux",
    "system.posix_acl_access",
    "system.posix_acl_default",
];

/// May a guest set or remove this attribute on its upper/work files?
/// `user.*` for applications, `trusted.overlay.*` for the guest's own overlayfs, `security.*`
/// (file capabilities, SELinux labels) and POSIX ACLs that overlayfs copies up with a file.
/// Anything else under `trusted.*` would be host-root metadata the guest has no business with.
pub fn guest_may_write(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"security.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

impl StrataFs {
    pub(crate) fn do_getxattr(
        &self,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let h = self.host(inode, libc::ENODATA)?;
        if h.area == Area::Union && is_private_xattr(name.to_bytes()) {
            return Err(err(libc::ENODATA));
        }
        // A file kept open for I/O answers without resolving a `/proc/self/fd` path: the guest
        // asks `security.capability` before every write.
        let size = size.min(XATTR_MAX) as usize;
        if let Some(f) = self.io_cache.get(&h, false) {
            if size == 0 {
                return Ok(GetxattrReply::Count(xattr::len_open(&f, name)? as u32));
            }
            return Ok(GetxattrReply::Value(xattr::get_open(&f, name, size)?));
        }
        let fd = h.cur();
        if size == 0 {
            let n = xattr::len(fd, name)?;
            return Ok(GetxattrReply::Count(n as u32));
        }
        let v = xattr::get(fd, name, size)?;
        Ok(GetxattrReply::Value(v))
    }

    pub(crate) fn do_listxattr(&self, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let Ok(h) = self.host(inode, libc::ENODATA) else {
            return Ok(if size == 0 {
                ListxattrReply::Count(0)
            } else {
                ListxattrReply::Names(Vec::new())
            });
        };
        if h.area == Area::Union {
            // Without overlayfs' own attributes: listed in full, then filtered.
            let all = xattr::list(h.cur(), XATTR_MAX as usize)?;
            let mut names = Vec::with_capacity(all.len());
            for n in all.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                if !is_private_xattr(n) {
                    names.extend_from_slice(n);
                    names.push(0);
                }
            }
            if size == 0 {
                return Ok(ListxattrReply::Count(names.len() as u32));
            }
            if names.len() > size as usize {
                return Err(err(libc::ERANGE));
            }
            return Ok(ListxattrReply::Names(names));
        }
        if size == 0 {
            let n = xattr::list(h.fd.as_fd(), 0)?.len();
            return Ok(ListxattrReply::Count(n as u32));
        }
        let names = xattr::list(h.fd.as_fd(), size.min(XATTR_MAX) as usize)?;
        Ok(ListxattrReply::Names(names))
    }

    pub(crate) fn do_setxattr(
        &self,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let h = self.writable_for_xattr(inode, name)?;
        xattr::set(h.cur(), name, value, flags as i32)
    }

    pub(crate) fn do_removexattr(&self, inode: u64, name: &CStr) -> io::Result<()> {
        let h = self.writable_for_xattr(inode, name)?;
        xattr::remove(h.cur(), name)
    }

    /// The node whose attribute `name` the guest changes, if it may: in the writable area, or
    /// a `/rootfs` node (copied up first), never overlayfs' own attributes there.
    fn writable_for_xattr(&self, inode: u64, name: &CStr) -> io::Result<Arc<HostNode>> {
        let h = self.host(inode, libc::EROFS)?;
        if h.area == Area::Union {
            if is_private_xattr(name.to_bytes()) || !guest_may_write(name.to_bytes()) {
                return Err(err(libc::EPERM));
            }
            self.copy_up(&h)?;
            return Ok(h);
        }
        if !h.area.writable() {
            return Err(err(libc::EROFS));
        }
        if !guest_may_write(name.to_bytes()) {
            return Err(err(libc::EPERM));
        }
        Ok(h)
    }
}
