//! Ring buffer records → analyzer [`Event`]s. The record types are the C structs of
//! `src/bpf/records.h` as libbpf-cargo generated them (`skel::types`), told apart by their
//! `kind`, matched by name (`c::kind::K_WAIT`).

use std::collections::{HashMap, HashSet};

use crate::analyze::{Event, Kind, Owner};
use crate::kallsyms::Symbolizer;
use crate::report::MountOp;
use crate::sys::record;
use crate::sys::skel::types as c;

fn cstr(b: &[i8]) -> String {
    let bytes: Vec<u8> = b
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn mount_op(o: i32) -> Option<MountOp> {
    match c::op(o as u32) {
        c::op::OP_MOUNT => Some(MountOp::Mount),
        c::op::OP_UMOUNT => Some(MountOp::Umount),
        c::op::OP_FSCONFIG => Some(MountOp::Fsconfig),
        _ => None,
    }
}

/// The kernel's frames of a stack from `bpf_get_stack` (`nbytes` filled, or an error).
fn frames(nbytes: i64, ips: &[u64]) -> &[u64] {
    let n = (nbytes.max(0) as usize / 8).min(ips.len());
    &ips[..n]
}

/// Records → analyzer events (symbols resolved, writer waits paired).
pub struct Converter {
    lock: u64,
    /// fexit/down_write reports every writer's acquisition: contention_end is not needed.
    writer_exits: bool,
    sym: Symbolizer,
    names: HashMap<u64, String>,
    waiting: HashSet<u32>,
}

impl Converter {
    pub fn new(lock: u64, sym: Symbolizer, writer_exits: bool) -> Converter {
        Converter {
            lock,
            writer_exits,
            sym,
            names: HashMap::new(),
            waiting: HashSet::new(),
        }
    }

    /// Kernel stack names, innermost first, without the BPF program and its trampoline.
    fn stack(&self, ips: &[u64]) -> Vec<String> {
        let names: Vec<String> = ips.iter().map(|&ip| self.sym.name(ip)).collect();
        let skip = names
            .iter()
            .take_while(|n| {
                n.starts_with("bpf_")
                    || n.starts_with("__bpf")
                    || n.starts_with("__traceiter")
                    || n.starts_with("0x")
            })
            .count();
        // A function with a trampoline (fentry/fexit attached) shows twice around it.
        let mut out: Vec<String> = Vec::new();
        for n in &names[skip..] {
            if n.starts_with("bpf_trampoline_") || out.last() == Some(n) {
                continue;
            }
            out.push(n.clone());
        }
        out
    }

    fn symbol(&mut self, addr: u64) -> String {
        let sym = &self.sym;
        self.names
            .entry(addr)
            .or_insert_with(|| sym.name(addr))
            .clone()
    }

    /// The event of one record; `None` for a short record, an unknown kind, or one that
    /// means nothing on its own (a reader's `contention_end`).
    pub fn convert(&mut self, bytes: &[u8]) -> Option<Event> {
        let e: c::event = record(bytes)?;
        let (pid, comm) = (e.pid, cstr(&e.comm));
        let kind = match e.kind {
            c::kind::K_READ_ACQ => Kind::ReadAcquired {
                lock: e.a,
                pid,
                comm,
            },
            c::kind::K_READ_REL => Kind::ReadReleased { lock: e.a },
            c::kind::K_WRITE_WAIT => {
                let s: c::stack_event = record(bytes)?;
                self.waiting.insert(e.tid);
                Kind::WriteWait {
                    lock: e.a,
                    pid,
                    comm,
                    stack: self.stack(frames(s.nbytes, &s.ips)),
                }
            }
            c::kind::K_WRITE_ACQ => {
                self.waiting.remove(&e.tid);
                Kind::WriteAcquired { lock: self.lock }
            }
            // contention_end also ends readers' contention: only a waiting writer acquires.
            c::kind::K_CONTENTION_END if !self.writer_exits && self.waiting.remove(&e.tid) => {
                Kind::WriteAcquired { lock: self.lock }
            }
            c::kind::K_CONTENTION_END => return None,
            c::kind::K_WRITE_REL => Kind::WriteReleased { lock: e.a },
            c::kind::K_SHRINK_START => Kind::ShrinkStart {
                shrinker: self.symbol(e.a),
                to_scan: e.b,
                pid,
                comm,
            },
            c::kind::K_SHRINK_END => Kind::ShrinkEnd { freed: e.b },
            c::kind::K_OFF_CPU => Kind::OffCpu,
            c::kind::K_ON_CPU => Kind::OnCpu,
            c::kind::K_MOUNT_START => Kind::MountStart {
                op: mount_op(e.small).unwrap_or(MountOp::Mount),
                fstype: cstr(&e.str),
                pid,
                comm,
            },
            c::kind::K_MOUNT_DONE => {
                let d: c::mount_done = record(bytes)?;
                Kind::MountDone {
                    ret: e.b,
                    fstype: cstr(&e.str),
                    phase_ns: d.ph_ns,
                }
            }
            c::kind::K_NAIVE_TRY => Kind::NaiveTry { ok: e.small != 0 },
            c::kind::K_NAIVE_UP => {
                let s: c::stack_event = record(bytes)?;
                Kind::NaiveUp {
                    lock: e.a,
                    stack: self.stack(frames(s.nbytes, &s.ips)),
                }
            }
            c::kind::K_WAIT => self.wait(bytes, pid, comm)?,
            c::kind::K_HOLD => {
                let h: c::hold_rec = record(bytes)?;
                Kind::Hold {
                    lock: e.a,
                    start_ns: h.start,
                    pid,
                    comm,
                    on_cpu_ns: h.on_cpu_ns,
                }
            }
            c::kind::K_SHRINK_CALL => {
                let c: c::call_rec = record(bytes)?;
                Kind::ShrinkCall {
                    start_ns: c.start,
                    shrinker: self.symbol(e.a),
                    to_scan: c.to_scan,
                    freed: e.b,
                    pid,
                    comm,
                }
            }
            c::kind::K_MOUNT => {
                let m: c::mount_rec = record(bytes)?;
                Kind::Mount {
                    op: mount_op(e.small)?,
                    fstype: cstr(&e.str),
                    start_ns: m.start,
                    ret: e.b,
                    lock_wait_ns: m.wait_ns,
                    pid,
                    comm,
                }
            }
            _ => return None,
        };
        Some(Event {
            ts_ns: e.ts,
            tid: e.tid,
            kind,
        })
    }

    fn wait(&self, bytes: &[u8], pid: u32, comm: String) -> Option<Kind> {
        let w: c::wait_rec = record(bytes)?;
        let owner = (w.owner_tid != 0).then(|| Owner {
            tid: w.owner_tid,
            pid: w.owner_pid,
            comm: cstr(&w.owner_comm),
        });
        Some(Kind::Wait {
            lock: w.e.a,
            start_ns: w.start,
            pid,
            comm,
            stack: self.stack(frames(w.nbytes, &w.ips)),
            in_mount: mount_op(w.e.small).map(|op| (op, cstr(&w.e.str))),
            owner,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a generated record, as the ring buffer hands them over.
    fn bytes<T: crate::sys::Record>(r: &T) -> Vec<u8> {
        let mut v = vec![0u8; std::mem::size_of::<T>()];
        crate::sys::write_record(r, &mut v);
        v
    }

    fn comm(s: &str) -> [i8; 16] {
        let mut c = [0i8; 16];
        for (d, b) in c.iter_mut().zip(s.bytes()) {
            *d = b as i8;
        }
        c
    }

    fn str32(s: &str) -> [i8; 32] {
        let mut c = [0i8; 32];
        for (d, b) in c.iter_mut().zip(s.bytes()) {
            *d = b as i8;
        }
        c
    }

    fn head(k: c::kind, tid: u32, ts: u64, a: u64, b: i64, small: i32, text: &str) -> c::event {
        c::event {
            ts,
            tid,
            pid: tid + 1000,
            kind: k,
            small,
            a,
            b,
            comm: comm("sh"),
            str: str32(text),
        }
    }

    fn with_stack(e: c::event, ips: &[u64]) -> c::stack_event {
        let mut s = c::stack_event {
            e,
            nbytes: (ips.len() * 8) as i64,
            ..Default::default()
        };
        s.ips[..ips.len()].copy_from_slice(ips);
        s
    }

    const LOCK: u64 = 0xffffffff82b5f8a0;
    const SYMS: &str = "ffffffffc0000000 t bpf_prog_abc_fentry_down_write\t[bpf]\n\
ffffffffc0001000 t bpf_trampoline_6442\t[bpf]\n\
ffffffff81100000 T down_write\nffffffff81200000 T prealloc_shrinker\n\
ffffffff81300000 T alloc_super\nffffffff81400000 t super_cache_scan\n";

    #[test]
    fn a_mount_end_record_carries_its_phases_and_type() {
        let mut c = Converter::new(LOCK, Symbolizer::from_text(SYMS), false);
        let d = c::mount_done {
            e: head(c::kind::K_MOUNT_DONE, 7, 500, 0, -16, 1, "tmpfs"),
            ph_ns: [1_000, 0, 2_500],
        };
        let e = c.convert(&bytes(&d)).unwrap();
        assert!(
            matches!(&e.kind, Kind::MountDone { ret: -16, fstype, phase_ns: [1_000, 0, 2_500] } if fstype == "tmpfs"),
            "{e:?}"
        );
    }

    #[test]
    fn decodes_and_converts_detail_records() {
        let mut c = Converter::new(LOCK, Symbolizer::from_text(SYMS), false);
        let e = c
            .convert(&bytes(&head(
                c::kind::K_MOUNT_START,
                7,
                100,
                0,
                0,
                0,
                "overlay",
            )))
            .unwrap();
        assert_eq!((e.tid, e.ts_ns), (7, 100));
        assert!(
            matches!(&e.kind, Kind::MountStart { op: MountOp::Mount, fstype, pid: 1007, comm } if fstype == "overlay" && comm == "sh")
        );
        // A writer's wait: the BPF frames are cut, the kernel's stack is named.
        let ips = [
            0xffffffffc0000010,
            0xffffffffc0001010,
            0xffffffff81100005,
            0xffffffff81200040,
            0xffffffff81300100,
            0xffffffffc0001010,
            0xffffffff81300005,
        ];
        let w = bytes(&with_stack(
            head(c::kind::K_WRITE_WAIT, 7, 200, LOCK, 0, 0, ""),
            &ips,
        ));
        match c.convert(&w).unwrap().kind {
            Kind::WriteWait { stack, lock, .. } => {
                assert_eq!(lock, LOCK);
                assert_eq!(stack, ["down_write", "prealloc_shrinker", "alloc_super"]);
            }
            k => panic!("{k:?}"),
        }
        // The shrinker callback's address becomes its name.
        let e = c
            .convert(&bytes(&head(
                c::kind::K_SHRINK_START,
                9,
                300,
                0xffffffff81400000,
                2_000_000,
                0,
                "",
            )))
            .unwrap();
        assert!(
            matches!(&e.kind, Kind::ShrinkStart { shrinker, to_scan: 2_000_000, .. } if shrinker == "super_cache_scan")
        );
        // contention_end of a task that was not waiting to write: dropped.
        let end = |tid| bytes(&head(c::kind::K_CONTENTION_END, tid, 400, LOCK, 0, 0, ""));
        assert!(c.convert(&end(9)).is_none());
        assert!(c.convert(&end(7)).is_some());
        // With fexit/down_write, that is the acquisition and contention_end is ignored.
        let mut c = Converter::new(LOCK, Symbolizer::from_text(SYMS), true);
        c.convert(&w);
        assert!(c.convert(&end(7)).is_none());
        let acq = bytes(&head(c::kind::K_WRITE_ACQ, 7, 501, LOCK, 0, 0, ""));
        assert!(c.convert(&acq).is_some());
        // Short records and unknown kinds are nothing.
        assert!(c.convert(&[0u8; 10]).is_none());
        assert!(c
            .convert(&bytes(&head(c::kind(99), 7, 1, 0, 0, 0, "")))
            .is_none());
        // A stack record cut short is nothing either.
        assert!(c.convert(&w[..w.len() - 8]).is_none());
    }

    #[test]
    fn default_mode_records_are_whole_intervals() {
        let mut c = Converter::new(LOCK, Symbolizer::from_text(SYMS), false);
        let mut w = c::wait_rec {
            e: head(
                c::kind::K_WAIT,
                7,
                2_000,
                LOCK,
                0,
                c::op::OP_MOUNT.0 as i32,
                "overlay",
            ),
            start: 500,
            owner_tid: 0,
            nbytes: 16,
            ..Default::default()
        };
        w.ips[0] = 0xffffffff81100005;
        w.ips[1] = 0xffffffff81200040;
        let e = c.convert(&bytes(&w)).unwrap();
        assert_eq!(e.ts_ns, 2_000);
        match e.kind {
            Kind::Wait {
                start_ns,
                stack,
                in_mount,
                owner,
                ..
            } => {
                assert_eq!(start_ns, 500);
                assert_eq!(stack, ["down_write", "prealloc_shrinker"]);
                assert_eq!(in_mount, Some((MountOp::Mount, "overlay".into())));
                assert_eq!(owner, None);
            }
            k => panic!("{k:?}"),
        }
        // Held by a writer when it began; waited outside any traced mount.
        w.owner_tid = 42;
        w.owner_pid = 40;
        w.owner_comm = comm("mount");
        w.e.small = c::op::OP_NONE.0 as i32;
        match c.convert(&bytes(&w)).unwrap().kind {
            Kind::Wait {
                owner, in_mount, ..
            } => {
                assert_eq!(in_mount, None);
                assert_eq!(
                    owner,
                    Some(Owner {
                        tid: 42,
                        pid: 40,
                        comm: "mount".into()
                    })
                );
            }
            k => panic!("{k:?}"),
        }
        let h = c::hold_rec {
            e: head(c::kind::K_HOLD, 9, 1_900, LOCK, 0, 0, ""),
            start: 100,
            on_cpu_ns: 1_500,
        };
        assert!(matches!(
            c.convert(&bytes(&h)).unwrap().kind,
            Kind::Hold {
                start_ns: 100,
                on_cpu_ns: 1_500,
                ..
            }
        ));
        let call = c::call_rec {
            e: head(
                c::kind::K_SHRINK_CALL,
                9,
                1_800,
                0xffffffff81400000,
                900,
                0,
                "",
            ),
            start: 150,
            to_scan: 2_000,
        };
        assert!(
            matches!(&c.convert(&bytes(&call)).unwrap().kind, Kind::ShrinkCall { start_ns: 150, to_scan: 2_000, freed: 900, shrinker, .. } if shrinker == "super_cache_scan")
        );
        let m = c::mount_rec {
            e: head(
                c::kind::K_MOUNT,
                7,
                2_100,
                0,
                0,
                c::op::OP_UMOUNT.0 as i32,
                "tmpfs",
            ),
            start: 400,
            wait_ns: 1_500,
        };
        assert!(
            matches!(&c.convert(&bytes(&m)).unwrap().kind, Kind::Mount { op: MountOp::Umount, start_ns: 400, lock_wait_ns: 1_500, fstype, .. } if fstype == "tmpfs")
        );
    }
}
