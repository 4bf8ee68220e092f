//! The server of the rootfs: a `strata serve` child or a `strata daemon` session.
