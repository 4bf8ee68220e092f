/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The records strata's BPF programs send to user space through the `events` ring buffer: the
 * contract with src/bpf/records.rs. libbpf-cargo generates the Rust types (`types::event`,
 * `types::wait_rec`, `types::kind`, ...) from these definitions (trace.bpf.c declares one
 * instance of each so that they are in the object's BTF), and user space matches records by
 * `kind` name: there are no offsets or numbers to keep in sync by hand.
 *
 * Every record starts with `struct event`; `kind` says which record it is.
 */
#ifndef STRATA_RECORDS_H
#define STRATA_RECORDS_H

#define MAX_FRAMES 32
#define N_PHASES 3

enum kind {
	/* --detail: one record per lock event, from the lock functions themselves */
	K_READ_ACQ = 1,		/* event: a = lock */
	K_READ_REL = 2,		/* event: a = lock */
	K_WRITE_WAIT = 3,	/* stack_event: a = lock; the waiter's stack */
	K_WRITE_ACQ = 4,	/* event: a = lock */
	K_WRITE_REL = 5,	/* event: a = lock */
	K_CONTENTION_END = 6,	/* event: a = lock (user space pairs it with a waiting writer) */
	K_SHRINK_START = 7,	/* event: a = scan_objects callback, b = objects to scan */
	K_SHRINK_END = 8,	/* event: b = objects freed */
	K_OFF_CPU = 9,		/* event: tid = the task switched out */
	K_ON_CPU = 10,		/* event: tid = the task switched in */
	K_MOUNT_START = 11,	/* event: small = op, str = filesystem type */
	K_MOUNT_DONE = 12,	/* mount_done: b = return value, str = type an umount ended */
	K_NAIVE_TRY = 13,	/* event: small = the trylock's result */
	K_NAIVE_UP = 14,	/* stack_event: a = the lock released */
	/* default mode: one record per interval that matters, sent when it ends */
	K_WAIT = 15,		/* wait_rec: a writer waited at least min_wait_ns */
	K_HOLD = 16,		/* hold_rec: a shrink_slab() that held the lock while a writer waited */
	K_SHRINK_CALL = 17,	/* call_rec: a shrinker callback that ran while a writer waited */
	K_MOUNT = 18,		/* mount_rec: a mount(2) or fsconfig(CREATE) that ran at least
				 * min_wait_ns */
};

enum op { OP_MOUNT = 0, OP_UMOUNT = 1, OP_FSCONFIG = 2, OP_NONE = 3 };

struct event {
	u64 ts; /* when it happened; for intervals, their end */
	u32 tid;
	u32 pid;
	enum kind kind;
	s32 small;
	u64 a;
	s64 b;
	char comm[16];
	char str[32];
};

struct stack_event {
	struct event e;
	s64 nbytes; /* bytes of ips filled by bpf_get_stack, or its error */
	u64 ips[MAX_FRAMES];
};

/* --detail: a mount's end, with the nanoseconds of its phases (alloc_super, shrinker
 * registration, unregistration). */
struct mount_done {
	struct event e;
	u64 ph_ns[N_PHASES];
};

/* A writer's wait for the lock: e.a = lock, e.small = the op it waited in (enum op),
 * e.str = that mount's filesystem type. owner_*: the writer holding the lock when the wait
 * began (owner_tid 0: held by readers). */
struct wait_rec {
	struct event e;
	u64 start;
	u32 owner_tid;
	u32 owner_pid;
	char owner_comm[16];
	s64 nbytes;
	u64 ips[MAX_FRAMES];
};

/* A reader's hold (one shrink_slab() call that got the lock), and the CPU time the task got
 * during it (its sum_exec_runtime). */
struct hold_rec {
	struct event e;
	u64 start;
	u64 on_cpu_ns;
};

/* One shrinker callback: e.a = scan_objects, e.b = objects freed. */
struct call_rec {
	struct event e;
	u64 start;
	s64 to_scan;
};

/* One mount, umount or fsconfig(CREATE): e.small = op, e.b = return value, e.str = type. */
struct mount_rec {
	struct event e;
	u64 start;
	u64 wait_ns;
};

/* Default mode's running totals (a per-CPU map, summed once at the end): every traced mount
 * and every writer wait on the lock, not only those sent as records. */
struct totals {
	u64 mounts[3];
	u64 mount_ns[3];
	u64 mount_wait_ns[3];
	u64 waits;
	u64 wait_ns;
};

#endif
