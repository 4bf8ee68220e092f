//! QMP (qemu monitor protocol): resume a VM started paused.
