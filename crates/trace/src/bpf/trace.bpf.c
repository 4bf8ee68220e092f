// SPDX-License-Identifier: GPL-2.0
/*
 * strata trace: who holds shrinker_rwsem while a mount waits for it.
 *
 * Programs send records (records.h) to one ring buffer; user space (src/bpf.rs) turns them
 * into analyzer events. Records never wake the reader (BPF_RB_NO_WAKEUP): a wakeup per record
 * cost a context switch per mount; user space drains the buffer every 50 ms instead.
 *
 * Two sets of programs, loaded per mode (bpf/groups.rs):
 *
 * - Default mode: cheap enough to leave on. No program on a global hot path (no rwsem
 *   release, context switch or syscall in general): writer waits from the lock's contention
 *   (lock:contention_begin/end, or the rwsem write slowpath), reader holds from the
 *   boundaries of shrink_slab() (the only reclaim path that takes the lock: trylock at its
 *   start, up_read at its end), the holding writer from the lock's owner field, CPU time from
 *   the holder's runtime counter, and the mount-family syscalls. State stays in maps; a record
 *   is sent only for a wait of at least `min_wait_ns` (with its stack), for holds and shrinker
 *   calls that overlapped a writer's wait, and for mounts that took at least `min_wait_ns`.
 *   Everything else is summed in `totals`.
 * - Detail mode (--detail): a record per lock event, from fexit/fentry on the rwsem functions
 *   themselves (every rwsem release in the kernel pays), on/off CPU from sched_switch, and
 *   every mount with its phases.
 */
#include "kernel.h"
#include "records.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* Set by user space before load. */
const volatile u64 target_lock = 0;
/* Also emit what the naive bpftrace script sees (any trylock, the next up_read of any lock). */
const volatile bool naive = false;
/* Default mode: waits and mounts shorter than this are only counted. */
const volatile u64 min_wait_ns = 10000000;

/* One instance of each record type, never used: they put the types in the object's BTF, from
 * which libbpf-cargo generates their Rust definitions. */
struct event _event = {};
struct stack_event _stack_event = {};
struct mount_done _mount_done = {};
struct wait_rec _wait_rec = {};
struct hold_rec _hold_rec = {};
struct call_rec _call_rec = {};
struct mount_rec _mount_rec = {};
enum op _op = OP_MOUNT;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* ================================ common ================================ */

enum phase { PH_ALLOC_SUPER = 0, PH_REGISTER = 1, PH_UNREGISTER = 2 };

/* Tasks whose on/off-CPU time matters: they hold the lock or run a shrinker. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, u32);
} interest SEC(".maps");

/* A traced mount in flight. Its phases and the type of the superblock an umount ends are
 * kept here and sent with its end, in one record (records, not probes, are most of the
 * tracer's cost on a tight mount loop). */
struct mstate {
	u32 op;
	u32 returned;
	u64 exit_ts;
	s64 ret;
	u64 ph_start;  /* start of the outermost open phase */
	u32 ph_open;   /* phases open (nesting depth) */
	u32 ph_cur;    /* the outermost open phase */
	u64 ph_ns[N_PHASES];
	char fstype[32];
};

/* Tasks inside a traced mount, umount or fsconfig(CREATE). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, struct mstate);
} mnt SEC(".maps");

/* fsopen(name) in flight, then the fd it returned: the new mount API's filesystem type. */
struct fsname {
	char s[32];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u32);
	__type(value, struct fsname);
} fsopen_name SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64);
	__type(value, struct fsname);
} fd_fstype SEC(".maps");

/* Naive mode: a trylock seen, its interval not yet ended by an up_read. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, u32);
} naive_open SEC(".maps");

/* Umounts that returned but may still end a superblock in task work (deactivate_super runs
 * after sys_exit, on the way back to user space): closed there or at the task's next syscall. */
u64 umounts_pending = 0;
/* Records the ring buffer had no room for. */
u64 dropped = 0;

/* The common part of every record, for the current task, now. */
static __always_inline void fill(struct event *e, u32 kind)
{
	u64 id = bpf_get_current_pid_tgid();
	e->ts = bpf_ktime_get_ns();
	e->tid = (u32)id;
	e->pid = id >> 32;
	e->kind = kind;
	e->small = 0;
	e->a = 0;
	e->b = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->str[0] = 0;
}

static __always_inline struct event *reserve(u32 kind)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&dropped, 1);
		return 0;
	}
	fill(e, kind);
	return e;
}

static __always_inline void emit_stack(void *ctx, u32 kind, u64 lock)
{
	struct stack_event *s = bpf_ringbuf_reserve(&events, sizeof(*s), 0);
	if (!s) {
		__sync_fetch_and_add(&dropped, 1);
		return;
	}
	fill(&s->e, kind);
	s->e.a = lock;
	s->nbytes = bpf_get_stack(ctx, s->ips, sizeof(s->ips), 0);
	bpf_ringbuf_submit(s, BPF_RB_NO_WAKEUP);
}

static __always_inline void simple(u32 kind, u64 a)
{
	struct event *e = reserve(kind);
	if (!e)
		return;
	e->a = a;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

static __always_inline void interest_add(u32 tid)
{
	u32 one = 1;
	u32 *n = bpf_map_lookup_elem(&interest, &tid);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&interest, &tid, &one, BPF_ANY);
}

static __always_inline void interest_drop(u32 tid)
{
	u32 *n = bpf_map_lookup_elem(&interest, &tid);
	if (!n)
		return;
	if (*n <= 1)
		bpf_map_delete_elem(&interest, &tid);
	else
		__sync_fetch_and_add(n, -1);
}

static __always_inline u32 cur_tid(void)
{
	return (u32)bpf_get_current_pid_tgid();
}

/* ============================== detail mode ============================== */

/* ---- group "reader": exact reader holds (successful trylocks, release by address) ---- */

SEC("fexit/down_read_trylock")
int BPF_PROG(fexit_down_read_trylock, struct rw_semaphore *sem, int ret)
{
	if ((u64)sem != target_lock)
		return 0;
	if (naive) {
		u32 tid = cur_tid(), one = 1;
		bpf_map_update_elem(&naive_open, &tid, &one, BPF_ANY);
		struct event *e = reserve(K_NAIVE_TRY);
		if (e) {
			e->a = (u64)sem;
			e->small = ret;
			bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		}
	}
	if (!ret)
		return 0; /* failed: a writer waits; no hold */
	interest_add(cur_tid());
	simple(K_READ_ACQ, (u64)sem);
	return 0;
}

SEC("fentry/up_read")
int BPF_PROG(fentry_up_read, struct rw_semaphore *sem)
{
	if (naive) {
		u32 tid = cur_tid();
		if (bpf_map_lookup_elem(&naive_open, &tid)) {
			bpf_map_delete_elem(&naive_open, &tid);
			emit_stack(ctx, K_NAIVE_UP, (u64)sem);
		}
	}
	if ((u64)sem != target_lock)
		return 0;
	interest_drop(cur_tid());
	simple(K_READ_REL, (u64)sem);
	return 0;
}

/* ---- group "writer": every writer's hold, from down_write's return to up_write ---- */

SEC("fexit/down_write")
int BPF_PROG(fexit_down_write, struct rw_semaphore *sem)
{
	if ((u64)sem != target_lock)
		return 0;
	interest_add(cur_tid());
	simple(K_WRITE_ACQ, (u64)sem);
	return 0;
}

SEC("fentry/up_write")
int BPF_PROG(fentry_up_write, struct rw_semaphore *sem)
{
	if ((u64)sem != target_lock)
		return 0;
	interest_drop(cur_tid());
	simple(K_WRITE_REL, (u64)sem);
	return 0;
}

/* ---- group "contention": writers that have to wait (5.19+), with the waiter's stack. Only
 * contended writers pay for the stack walk: a tight mount loop mostly takes the lock at once. */

#define LCB_F_WRITE (1U << 2)

SEC("tp_btf/contention_begin")
int BPF_PROG(tp_contention_begin, void *lock, unsigned int flags)
{
	if ((u64)lock == target_lock && (flags & LCB_F_WRITE))
		emit_stack(ctx, K_WRITE_WAIT, (u64)lock);
	return 0;
}

SEC("tp_btf/contention_end")
int BPF_PROG(tp_contention_end, void *lock, int ret)
{
	/* Readers' contention ends too: user space pairs this with an open writer wait. */
	if ((u64)lock == target_lock)
		simple(K_CONTENTION_END, (u64)lock);
	return 0;
}

/* ---- group "writer_entry": before 5.19 (no contention tracepoints), every down_write of the
 * lock starts a wait, with its stack ---- */

SEC("fentry/down_write")
int BPF_PROG(fentry_down_write, struct rw_semaphore *sem)
{
	if ((u64)sem == target_lock)
		emit_stack(ctx, K_WRITE_WAIT, (u64)sem);
	return 0;
}

/* ---- group "shrink": shrinker callbacks ---- */

SEC("tp_btf/mm_shrink_slab_start")
int BPF_PROG(tp_shrink_start, struct shrinker *shr, struct shrink_control *sc,
	     long nr_objects_to_shrink, unsigned long cache_items, unsigned long long delta,
	     unsigned long total_scan)
{
	struct event *e = reserve(K_SHRINK_START);
	if (!e)
		return 0;
	e->a = (u64)BPF_CORE_READ(shr, scan_objects);
	e->b = total_scan;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	interest_add(cur_tid());
	return 0;
}

SEC("tp_btf/mm_shrink_slab_end")
int BPF_PROG(tp_shrink_end, struct shrinker *shr, int nid, int shrinker_retval)
{
	struct event *e = reserve(K_SHRINK_END);
	if (!e)
		return 0;
	e->b = shrinker_retval;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	interest_drop(cur_tid());
	return 0;
}

/* ---- group "sched": on/off CPU of the tasks of interest ---- */

SEC("tp_btf/sched_switch")
int BPF_PROG(tp_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	u32 p = BPF_CORE_READ(prev, pid), n = BPF_CORE_READ(next, pid);
	if (bpf_map_lookup_elem(&interest, &p)) {
		struct event *e = reserve(K_OFF_CPU);
		if (e) {
			e->tid = p;
			bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		}
	}
	if (bpf_map_lookup_elem(&interest, &n)) {
		struct event *e = reserve(K_ON_CPU);
		if (e) {
			e->tid = n;
			bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
		}
	}
	return 0;
}

/* ---- group "syscalls_tp": mount(2), umount2(2), fsopen + fsconfig(CREATE) from the
 * raw_syscalls tracepoints, where fentry on the syscalls is refused (group "syscalls") ---- */

#define NR_MOUNT 165
#define NR_UMOUNT2 166
#define NR_FSOPEN 430
#define NR_FSCONFIG 431
#define FSCONFIG_CMD_CREATE 6
#define FSCONFIG_CMD_CREATE_EXCL 8
/* MS_REMOUNT | MS_BIND | MS_MOVE | MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED: no new
 * superblock. */
#define MS_NO_SB (32 | 4096 | 8192 | (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20))

static __always_inline void mount_start(u32 op, const char *fstype, bool user)
{
	u32 tid = cur_tid();
	struct mstate st = { .op = op };
	struct event *e = reserve(K_MOUNT_START);
	if (!e)
		return;
	e->small = op;
	if (fstype) {
		if (user)
			bpf_probe_read_user_str(e->str, sizeof(e->str), fstype);
		else
			bpf_probe_read_kernel_str(e->str, sizeof(e->str), fstype);
	}
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	bpf_map_update_elem(&mnt, &tid, &st, BPF_ANY);
}

static __always_inline void mount_end(u32 tid, u64 ts, s64 ret, struct mstate *st)
{
	struct mount_done *d = bpf_ringbuf_reserve(&events, sizeof(*d), 0);
	if (!d) {
		__sync_fetch_and_add(&dropped, 1);
		bpf_map_delete_elem(&mnt, &tid);
		return;
	}
	fill(&d->e, K_MOUNT_DONE);
	d->e.ts = ts;
	d->e.tid = tid;
	d->e.small = st->op;
	d->e.b = ret;
	__builtin_memcpy(d->e.str, st->fstype, sizeof(d->e.str));
	d->ph_ns[0] = st->ph_ns[0];
	d->ph_ns[1] = st->ph_ns[1];
	d->ph_ns[2] = st->ph_ns[2];
	bpf_ringbuf_submit(d, BPF_RB_NO_WAKEUP);
	bpf_map_delete_elem(&mnt, &tid);
}

/* What each mount-family syscall does at entry and exit, shared by both groups below. */

static __always_inline void mount_enter(struct pt_regs *regs)
{
	unsigned long flags = BPF_CORE_READ(regs, r10);
	const char *type = (const char *)BPF_CORE_READ(regs, dx);
	if ((flags & 0xffff0000) == 0xC0ED0000)
		flags &= 0xffff;
	if (!type || (flags & MS_NO_SB))
		return;
	mount_start(OP_MOUNT, type, true);
}

/* The end of a mount, umount (see umount_exit) or fsconfig(CREATE) the task has open. */
static __always_inline void mount_exit(long ret)
{
	u32 tid = cur_tid();
	struct mstate *st = bpf_map_lookup_elem(&mnt, &tid);
	if (st)
		mount_end(tid, bpf_ktime_get_ns(), ret, st);
}

/* A successful umount may still end a superblock in task work: wait for it if `later`. */
static __always_inline void umount_exit(long ret, bool later)
{
	u32 tid = cur_tid();
	struct mstate *st = bpf_map_lookup_elem(&mnt, &tid);
	if (!st)
		return;
	if (ret == 0 && later) {
		st->returned = 1;
		st->exit_ts = bpf_ktime_get_ns();
		st->ret = ret;
		__sync_fetch_and_add(&umounts_pending, 1);
		return;
	}
	mount_end(tid, bpf_ktime_get_ns(), ret, st);
}

/* A returned umount waiting for its task work: end it, when the task work ran (`now`) or at
 * its syscall's exit (the task went on to its next syscall: no superblock ended). */
static __always_inline void umount_settle(bool now)
{
	if (!umounts_pending)
		return;
	u32 tid = cur_tid();
	struct mstate *st = bpf_map_lookup_elem(&mnt, &tid);
	if (!st || !st->returned)
		return;
	__sync_fetch_and_add(&umounts_pending, -1);
	mount_end(tid, now ? bpf_ktime_get_ns() : st->exit_ts, st->ret, st);
}

static __always_inline void fsopen_enter(struct pt_regs *regs)
{
	u32 tid = cur_tid();
	struct fsname n = {};
	bpf_probe_read_user_str(n.s, sizeof(n.s), (const char *)BPF_CORE_READ(regs, di));
	bpf_map_update_elem(&fsopen_name, &tid, &n, BPF_ANY);
}

static __always_inline void fsopen_exit(long ret)
{
	u32 tid = cur_tid();
	struct fsname *n = bpf_map_lookup_elem(&fsopen_name, &tid);
	if (!n)
		return;
	if (ret >= 0) {
		u64 key = ((u64)(bpf_get_current_pid_tgid() >> 32) << 32) | (u32)ret;
		bpf_map_update_elem(&fd_fstype, &key, n, BPF_ANY);
	}
	bpf_map_delete_elem(&fsopen_name, &tid);
}

static __always_inline void fsconfig_enter(struct pt_regs *regs)
{
	unsigned int cmd = BPF_CORE_READ(regs, si);
	if (cmd != FSCONFIG_CMD_CREATE && cmd != FSCONFIG_CMD_CREATE_EXCL)
		return;
	u64 key = ((u64)(bpf_get_current_pid_tgid() >> 32) << 32) | (u32)BPF_CORE_READ(regs, di);
	struct fsname *n = bpf_map_lookup_elem(&fd_fstype, &key);
	mount_start(OP_FSCONFIG, n ? n->s : "?", false);
}

/* ---- group "syscalls_tp" (continued): every syscall's entry and exit; an umount's superblock
 * ends at deactivate_locked_super (group "sb_end") or at the task's next syscall ---- */

SEC("tp_btf/sys_enter")
int BPF_PROG(tp_sys_enter, struct pt_regs *regs, long id)
{
	umount_settle(false);
	if (id == NR_MOUNT)
		mount_enter(regs);
	else if (id == NR_UMOUNT2)
		mount_start(OP_UMOUNT, 0, false);
	else if (id == NR_FSOPEN)
		fsopen_enter(regs);
	else if (id == NR_FSCONFIG)
		fsconfig_enter(regs);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(tp_sys_exit, struct pt_regs *regs, long ret)
{
	long id = BPF_CORE_READ(regs, orig_ax);
	if (id == NR_FSOPEN)
		fsopen_exit(ret);
	else if (id == NR_UMOUNT2)
		umount_exit(ret, true);
	else if (id == NR_MOUNT || id == NR_FSCONFIG)
		mount_exit(ret);
	return 0;
}

/* ---- group "syscalls": the same from fentry/fexit on the four syscalls' entry points, so
 * that only they pay: the raw_syscalls tracepoints put every syscall of every task on the
 * slow path. A successful umount that queued task work (its superblock teardown, run on the
 * way back to user space) ends at task_work_run's return. ---- */

SEC("fentry/__x64_sys_mount")
int BPF_PROG(fentry_sys_mount, struct pt_regs *regs)
{
	mount_enter(regs);
	return 0;
}

SEC("fexit/__x64_sys_mount")
int BPF_PROG(fexit_sys_mount, struct pt_regs *regs, long ret)
{
	mount_exit(ret);
	return 0;
}

SEC("fentry/__x64_sys_umount")
int BPF_PROG(fentry_sys_umount, struct pt_regs *regs)
{
	mount_start(OP_UMOUNT, 0, false);
	return 0;
}

SEC("fexit/__x64_sys_umount")
int BPF_PROG(fexit_sys_umount, struct pt_regs *regs, long ret)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	umount_exit(ret, BPF_CORE_READ(task, task_works) != 0);
	return 0;
}

SEC("fexit/task_work_run")
int BPF_PROG(fexit_task_work_run)
{
	umount_settle(true);
	return 0;
}

SEC("fentry/__x64_sys_fsopen")
int BPF_PROG(fentry_sys_fsopen, struct pt_regs *regs)
{
	fsopen_enter(regs);
	return 0;
}

SEC("fexit/__x64_sys_fsopen")
int BPF_PROG(fexit_sys_fsopen, struct pt_regs *regs, long ret)
{
	fsopen_exit(ret);
	return 0;
}

SEC("fentry/__x64_sys_fsconfig")
int BPF_PROG(fentry_sys_fsconfig, struct pt_regs *regs)
{
	fsconfig_enter(regs);
	return 0;
}

SEC("fexit/__x64_sys_fsconfig")
int BPF_PROG(fexit_sys_fsconfig, struct pt_regs *regs, long ret)
{
	mount_exit(ret);
	return 0;
}

/* ---- group "sb_end": the superblock an umount ends (its type; the umount's real end) ---- */

SEC("fentry/deactivate_locked_super")
int BPF_PROG(fentry_deact_sb, struct super_block *sb)
{
	u32 tid = cur_tid();
	struct mstate *st = bpf_map_lookup_elem(&mnt, &tid);
	if (!st)
		return 0;
	bpf_probe_read_kernel_str(st->fstype, sizeof(st->fstype), BPF_CORE_READ(sb, s_type, name));
	return 0;
}

SEC("fexit/deactivate_locked_super")
int BPF_PROG(fexit_deact_sb, struct super_block *sb)
{
	u32 tid = cur_tid();
	struct mstate *st = bpf_map_lookup_elem(&mnt, &tid);
	if (!st || !st->returned)
		return 0;
	__sync_fetch_and_add(&umounts_pending, -1);
	mount_end(tid, bpf_ktime_get_ns(), st->ret, st);
	return 0;
}

/* ---- groups "phases_6_1" and "phases_6_7": where the mount's time goes ---- */

/* Only outermost phases count, so that phases never overlap. */
static __always_inline int phase(bool start, u32 ph)
{
	u32 tid = cur_tid();
	struct mstate *st = bpf_map_lookup_elem(&mnt, &tid);
	if (!st)
		return 0;
	u64 now = bpf_ktime_get_ns();
	if (start) {
		if (st->ph_open == 0) {
			st->ph_cur = ph;
			st->ph_start = now;
		}
		st->ph_open++;
		return 0;
	}
	if (st->ph_open == 0)
		return 0;
	st->ph_open--;
	if (st->ph_open)
		return 0;
	u32 c = st->ph_cur;
	u64 d = now - st->ph_start;
	if (c == 0)
		st->ph_ns[0] += d;
	else if (c == 1)
		st->ph_ns[1] += d;
	else if (c == 2)
		st->ph_ns[2] += d;
	return 0;
}

SEC("fentry/alloc_super")
int BPF_PROG(fentry_alloc_super) { return phase(true, PH_ALLOC_SUPER); }
SEC("fexit/alloc_super")
int BPF_PROG(fexit_alloc_super) { return phase(false, PH_ALLOC_SUPER); }

/* ≤ 6.6: prealloc_shrinker (inside alloc_super), register_shrinker_prepared, unregister_shrinker. */
SEC("fentry/register_shrinker_prepared")
int BPF_PROG(fentry_reg_prep) { return phase(true, PH_REGISTER); }
SEC("fexit/register_shrinker_prepared")
int BPF_PROG(fexit_reg_prep) { return phase(false, PH_REGISTER); }
SEC("fentry/unregister_shrinker")
int BPF_PROG(fentry_unreg) { return phase(true, PH_UNREGISTER); }
SEC("fexit/unregister_shrinker")
int BPF_PROG(fexit_unreg) { return phase(false, PH_UNREGISTER); }

/* 6.7+: shrinker_alloc (inside alloc_super), shrinker_register, shrinker_free. */
SEC("fentry/shrinker_register")
int BPF_PROG(fentry_shr_reg) { return phase(true, PH_REGISTER); }
SEC("fexit/shrinker_register")
int BPF_PROG(fexit_shr_reg) { return phase(false, PH_REGISTER); }
SEC("fentry/shrinker_free")
int BPF_PROG(fentry_shr_free) { return phase(true, PH_UNREGISTER); }
SEC("fexit/shrinker_free")
int BPF_PROG(fexit_shr_free) { return phase(false, PH_UNREGISTER); }

/* ============================= default mode ============================= */

/* Writers waiting for the lock now, and waits begun so far: a hold or a shrinker call
 * overlapped a wait if one was waiting at its start or end, or one began in between. */
u64 writers_waiting = 0;
u64 wait_seq = 0;

/* Per CPU, summed by user space at the end: no atomic on the per-mount path. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct totals);
} totals SEC(".maps");

static __always_inline struct totals *my_totals(void)
{
	u32 zero = 0;
	return bpf_map_lookup_elem(&totals, &zero);
}

#define RWSEM_WRITER_LOCKED 1UL
#define RWSEM_READER_OWNED 1UL
#define RWSEM_OWNER_FLAGS 3UL

/* A writer waiting for the lock. */
struct wstate {
	u64 start;
	u32 owner_tid;
	u32 owner_pid;
	char owner_comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, struct wstate);
} waiting SEC(".maps");

/* Per-task state (fresh state is zeroed: `active` 0 means nothing in flight). A shrink_slab()
 * call's lives in task storage: created on the reclaim path only, gone with the task. */

/* A task inside shrink_slab(), and the shrinker callback it runs. */
struct hstate {
	u32 active;
	u32 depth;       /* nested shrink_slab() calls (reclaim from inside a shrinker) */
	u64 start;
	u64 runtime;     /* the task's sum_exec_runtime at start */
	u64 seq;         /* wait_seq at start */
	u32 calls;       /* shrinker callbacks run: the trylock succeeded */
	u32 overlapped;  /* a writer was waiting at start */
	u32 in_call;
	u32 call_overlapped;
	u64 call_start;
	u64 call_fn;
	s64 call_scan;
	u64 call_seq;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct hstate);
} holding SEC(".maps");

/* A superblock-creating mount(2) or fsconfig(CREATE) in flight. */
struct lstate {
	u32 active;
	u32 op;
	s32 fd;    /* fsconfig: the fs_context's fd */
	u32 pad;
	u64 start;
	u64 wait_ns;
	u64 regs;  /* the syscall's user pt_regs: mount(2)'s type argument */
};

/* Keyed by thread id and never deleted from: after a thread's first mount, the per-mount path
 * is two lookups, which the verifier inlines (no helper call). LRU: threads that are gone make
 * room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, struct lstate);
} lean_mnt SEC(".maps");

static __always_inline struct lstate *mount_state(bool create)
{
	u32 tid = cur_tid();
	struct lstate *st = bpf_map_lookup_elem(&lean_mnt, &tid);
	if (st || !create)
		return st;
	struct lstate fresh = {};
	bpf_map_update_elem(&lean_mnt, &tid, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&lean_mnt, &tid);
}

static __always_inline struct hstate *hold_state(bool create)
{
	return bpf_task_storage_get(&holding, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

static __always_inline bool overlapping(u64 seq, u32 was_waiting)
{
	return was_waiting || writers_waiting > 0 || wait_seq != seq;
}

static __always_inline u64 current_runtime(void)
{
	return bpf_get_current_task_btf()->se.sum_exec_runtime;
}

#define NR_UMOUNT2 166

/* The filesystem type of a traced mount, into `out` (empty if unknown). Only when a record
 * is sent: probe reads from the pointers kept. */
static __always_inline void lean_fstype(struct lstate *st, char *out, u32 len)
{
	out[0] = 0;
	/* Plain copies first: a CO-RE read must not relocate the fields of our own struct. */
	struct pt_regs *regs = (struct pt_regs *)st->regs;
	s32 fd = st->fd;
	if (st->op == OP_MOUNT && regs) {
		const char *type = (const char *)BPF_CORE_READ(regs, dx);
		bpf_probe_read_user_str(out, len, type);
	} else if (st->op == OP_FSCONFIG && fd >= 0) {
		struct task_struct *t = bpf_get_current_task_btf();
		struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
		struct file **fds = BPF_CORE_READ(fdt, fd);
		struct file *f = 0;
		if ((u32)fd >= BPF_CORE_READ(fdt, max_fds))
			return;
		bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
		struct fs_context *fc = BPF_CORE_READ(f, private_data);
		const char *name = BPF_CORE_READ(fc, fs_type, name);
		bpf_probe_read_kernel_str(out, len, name);
	}
}

/* A mount ended at `end`: counted, and sent if it took at least min_wait_ns. */
static __always_inline void lean_mount_end(struct lstate *st, u64 end, s64 ret)
{
	u32 op = st->op;
	u64 d = end - st->start;
	struct totals *t = my_totals();
	st->active = 0;
	if (t && op < 3) {
		t->mounts[op]++;
		t->mount_ns[op] += d;
		t->mount_wait_ns[op] += st->wait_ns;
	}
	if (d < min_wait_ns)
		return;
	struct mount_rec *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		__sync_fetch_and_add(&dropped, 1);
		return;
	}
	fill(&r->e, K_MOUNT);
	r->e.ts = end;
	r->e.small = op;
	r->e.b = ret;
	lean_fstype(st, r->e.str, sizeof(r->e.str));
	r->start = st->start;
	r->wait_ns = st->wait_ns;
	bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
}

/* ---- group "waits": a writer's wait for the lock, from contention_begin/end (5.19+) ---- */

static __always_inline void wait_begin(void *lock)
{
	if ((u64)lock != target_lock)
		return;
	u32 tid = cur_tid();
	struct wstate w = { .start = bpf_ktime_get_ns() };
	struct rw_semaphore *sem = lock;
	long count = BPF_CORE_READ(sem, count.counter);
	unsigned long owner = BPF_CORE_READ(sem, owner.counter);
	if ((count & RWSEM_WRITER_LOCKED) && !(owner & RWSEM_READER_OWNED)) {
		struct task_struct *t = (struct task_struct *)(owner & ~RWSEM_OWNER_FLAGS);
		w.owner_tid = BPF_CORE_READ(t, pid);
		w.owner_pid = BPF_CORE_READ(t, tgid);
		BPF_CORE_READ_STR_INTO(&w.owner_comm, t, comm);
	}
	bpf_map_update_elem(&waiting, &tid, &w, BPF_ANY);
	__sync_fetch_and_add(&writers_waiting, 1);
	__sync_fetch_and_add(&wait_seq, 1);
}

static __always_inline void wait_end(void *ctx, void *lock)
{
	if ((u64)lock != target_lock)
		return;
	u32 tid = cur_tid();
	struct wstate *w = bpf_map_lookup_elem(&waiting, &tid);
	if (!w)
		return; /* a reader's contention, or a wait begun before the trace */
	u64 now = bpf_ktime_get_ns();
	u64 d = now - w->start;
	__sync_fetch_and_add(&writers_waiting, -1);
	struct totals *t = my_totals();
	if (t) {
		t->waits++;
		t->wait_ns += d;
	}
	struct lstate *st = mount_state(false);
	if (st && !st->active)
		st = 0;
	if (st)
		st->wait_ns += d;
	if (d >= min_wait_ns) {
		struct wait_rec *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
		if (r) {
			fill(&r->e, K_WAIT);
			r->e.ts = now;
			r->e.a = (u64)lock;
			r->e.small = OP_NONE;
			if (st) {
				r->e.small = st->op;
				lean_fstype(st, r->e.str, sizeof(r->e.str));
			} else {
				/* umount2 is not traced (no probe on its path): its mount's teardown runs
				 * as task work on the way out, the syscall number still in the task's
				 * registers. */
				struct pt_regs *u =
					(struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
				if (u && BPF_CORE_READ(u, orig_ax) == NR_UMOUNT2)
					r->e.small = OP_UMOUNT;
			}
			r->start = w->start;
			r->owner_tid = w->owner_tid;
			r->owner_pid = w->owner_pid;
			__builtin_memcpy(r->owner_comm, w->owner_comm, sizeof(r->owner_comm));
			/* Still inside the slow path: the same frames as when the wait began. */
			r->nbytes = bpf_get_stack(ctx, r->ips, sizeof(r->ips), 0);
			bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
		} else {
			__sync_fetch_and_add(&dropped, 1);
		}
	}
	bpf_map_delete_elem(&waiting, &tid);
}

SEC("tp_btf/contention_begin")
int BPF_PROG(tp_wait_begin, void *lock, unsigned int flags)
{
	if (flags & LCB_F_WRITE)
		wait_begin(lock);
	return 0;
}

SEC("tp_btf/contention_end")
int BPF_PROG(tp_wait_end, void *lock, int ret)
{
	wait_end(ctx, lock);
	return 0;
}

/* ---- group "waits_slowpath": the same where the contention tracepoints are missing (< 5.19):
 * the rwsem write slow path, entered only when the lock is not free ---- */

SEC("fentry/rwsem_down_write_slowpath")
int BPF_PROG(fentry_wait_slowpath, struct rw_semaphore *sem, int state)
{
	wait_begin(sem);
	return 0;
}

SEC("fexit/rwsem_down_write_slowpath")
int BPF_PROG(fexit_wait_slowpath, struct rw_semaphore *sem, int state, struct rw_semaphore *ret)
{
	wait_end(ctx, sem);
	return 0;
}

/* ---- group "holds": readers, from shrink_slab(): it takes the lock with down_read_trylock
 * at its start and releases it before returning; with a writer waiting, a call that got the
 * lock returns > 0 (it bails out after its current shrinker with at least 1) or ran a
 * shrinker, one whose trylock failed returns 0 at once ---- */

SEC("fentry/shrink_slab")
int BPF_PROG(fentry_shrink_slab)
{
	struct hstate *h = hold_state(true);
	if (!h)
		return 0;
	if (h->active) {
		h->depth++;
		return 0;
	}
	h->active = 1;
	h->depth = 0;
	h->start = bpf_ktime_get_ns();
	h->runtime = current_runtime();
	h->seq = wait_seq;
	h->calls = 0;
	h->overlapped = writers_waiting > 0;
	h->in_call = 0;
	return 0;
}

SEC("fexit/shrink_slab")
int BPF_PROG(fexit_shrink_slab, gfp_t gfp, int nid, struct mem_cgroup *memcg, int priority,
	     unsigned long ret)
{
	struct hstate *h = hold_state(false);
	if (!h || !h->active)
		return 0;
	if (h->depth) {
		h->depth--;
		return 0;
	}
	h->active = 0;
	if ((ret == 0 && h->calls == 0) || !overlapping(h->seq, h->overlapped))
		return 0;
	struct hold_rec *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		__sync_fetch_and_add(&dropped, 1);
		return 0;
	}
	fill(&r->e, K_HOLD);
	r->e.a = target_lock;
	r->start = h->start;
	r->on_cpu_ns = current_runtime() - h->runtime;
	bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	return 0;
}

SEC("tp_btf/mm_shrink_slab_start")
int BPF_PROG(tp_call_start, struct shrinker *shr, struct shrink_control *sc,
	     long nr_objects_to_shrink, unsigned long cache_items, unsigned long long delta,
	     unsigned long total_scan)
{
	struct hstate *h = hold_state(false);
	if (!h || !h->active)
		return 0;
	h->calls++;
	h->in_call = 1;
	h->call_start = bpf_ktime_get_ns();
	h->call_fn = (u64)shr->scan_objects;
	h->call_scan = total_scan;
	h->call_seq = wait_seq;
	h->call_overlapped = writers_waiting > 0;
	return 0;
}

SEC("tp_btf/mm_shrink_slab_end")
int BPF_PROG(tp_call_end, struct shrinker *shr, int nid, int shrinker_retval)
{
	struct hstate *h = hold_state(false);
	if (!h || !h->active || !h->in_call)
		return 0;
	h->in_call = 0;
	if (!overlapping(h->call_seq, h->call_overlapped))
		return 0;
	struct call_rec *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		__sync_fetch_and_add(&dropped, 1);
		return 0;
	}
	fill(&r->e, K_SHRINK_CALL);
	r->e.a = h->call_fn;
	r->e.b = shrinker_retval;
	r->start = h->call_start;
	r->to_scan = h->call_scan;
	bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	return 0;
}

/* ---- group "mounts": fentry/fexit on mount(2) and fsconfig(CREATE), the calls that create
 * superblocks (umount2 is not probed: its waits are told by the syscall number), state in task
 * storage; a record only for those that took at least min_wait_ns ---- */

static __always_inline void lean_start(u32 op, struct pt_regs *regs, s32 fd)
{
	struct lstate *st = mount_state(true);
	if (!st)
		return;
	st->active = 1;
	st->op = op;
	st->fd = fd;
	st->start = bpf_ktime_get_ns();
	st->wait_ns = 0;
	st->regs = (u64)regs;
}

static __always_inline void lean_exit(s64 ret)
{
	struct lstate *st = mount_state(false);
	if (st && st->active)
		lean_mount_end(st, bpf_ktime_get_ns(), ret);
}

SEC("fentry/__x64_sys_mount")
int BPF_PROG(fentry_lean_mount, struct pt_regs *regs)
{
	unsigned long flags = regs->r10;
	if ((flags & 0xffff0000) == 0xC0ED0000)
		flags &= 0xffff;
	if (!regs->dx || (flags & MS_NO_SB))
		return 0;
	lean_start(OP_MOUNT, regs, -1);
	return 0;
}

SEC("fexit/__x64_sys_mount")
int BPF_PROG(fexit_lean_mount, struct pt_regs *regs, long ret)
{
	lean_exit(ret);
	return 0;
}

SEC("fentry/__x64_sys_fsconfig")
int BPF_PROG(fentry_lean_fsconfig, struct pt_regs *regs)
{
	unsigned int cmd = regs->si;
	if (cmd != FSCONFIG_CMD_CREATE && cmd != FSCONFIG_CMD_CREATE_EXCL)
		return 0;
	lean_start(OP_FSCONFIG, regs, (s32)regs->di);
	return 0;
}

SEC("fexit/__x64_sys_fsconfig")
int BPF_PROG(fexit_lean_fsconfig, struct pt_regs *regs, long ret)
{
	lean_exit(ret);
	return 0;
}
