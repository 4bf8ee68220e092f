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
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
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

struct callback_head;

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	struct callback_head *task_works;
};

struct rw_semaphore;

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

#pragma clang attribute pop

#endif
