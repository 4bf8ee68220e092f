/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few kernel types strata's BPF programs touch, written by hand instead of a generated
 * vmlinux.h (100k+ lines): every struct is marked preserve_access_index, so each field access
 * is a CO-RE relocation that libbpf resolves by *name* against the running kernel's BTF
 * (/sys/kernel/btf/vmlinux) at load time. Field order and offsets here do not matter; only
 * names and kinds do. The build needs clang, not kernel headers or a BTF-enabled machine.
 */
#ifndef STRATA_KERNEL_H
#define STRATA_KERNEL_H

/* bpf_tracing.h: use the kernel's pt_regs field names (di, si, ...). */
#define __VMLINUX_H__

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
};

enum {
	BPF_F_NO_PREALLOC = 1,
};

enum {
	BPF_LOCAL_STORAGE_GET_F_CREATE = 1,
};

enum {
	BPF_RB_NO_WAKEUP = 1,
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long cx;
	unsigned long r8;
	unsigned long r9;
	unsigned long r10;
	unsigned long ax;
	unsigned long orig_ax;
	unsigned long ip;
	unsigned long sp;
	unsigned long bp;
};

typedef unsigned int gfp_t;

typedef struct {
	s64 counter;
} atomic_long_t;

struct callback_head {
	struct callback_head *next;
	void (*func)(struct callback_head *head);
};

struct sched_entity {
	u64 sum_exec_runtime;
};

struct file;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	struct callback_head *task_works;
	struct sched_entity se;
	struct files_struct *files;
};

/* count: bit 0 is RWSEM_WRITER_LOCKED; owner: the writer's task_struct, or the last reader's
 * with bit 0 (RWSEM_READER_OWNED) set; bits 0-1 are flags. */
struct rw_semaphore {
	atomic_long_t count;
	atomic_long_t owner;
};

struct mem_cgroup;

struct shrinker {
	void *count_objects;
	void *scan_objects;
};

struct shrink_control;

struct file_system_type {
	const char *name;
};

struct super_block {
	struct file_system_type *s_type;
};

struct fs_context {
	struct file_system_type *fs_type;
};

struct file {
	void *private_data;
};

#pragma clang attribute pop

#endif
