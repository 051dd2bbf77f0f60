/* SPDX-License-Identifier: GPL-2.0 */
/*
 * klptrace.h - the one event layout shared by the BPF programs (bpf/klptrace.bpf.c)
 * and the Python loader (tracer/rawevents.py mirrors it with ctypes; a test
 * checks the sizes agree). Every BPF program writes one struct klpt_event
 * into the ring buffer; which fields mean something depends on `kind`.
 */
#ifndef KLPTRACE_H
#define KLPTRACE_H

#define KLPT_NAME_LEN  56   /* MODULE_NAME_LEN on 64-bit */
#define KLPT_MAX_OBJS  8    /* objects per patch snapshot; more are counted in nobjs_total */

/* Event kinds: one per observation point (see docs/probes.md). */
#define KLPT_ENABLE_RET        1   /* klp_enable_patch returned: ret */
#define KLPT_INIT_TRANSITION   2   /* klp_init_transition(patch, state): snapshot, arg = state */
#define KLPT_PATCH_OBJECT      3   /* klp_patch_object(obj) entry: objs[0] */
#define KLPT_PATCH_OBJECT_RET  4   /* klp_patch_object returned (module coming only): ret */
#define KLPT_START_TRANSITION  5   /* klp_start_transition(): snapshot of the transition patch */
#define KLPT_COMPLETE          6   /* klp_complete_transition(): snapshot */
#define KLPT_CANCEL            7   /* klp_cancel_transition(): snapshot */
#define KLPT_REVERSE           8   /* klp_reverse_transition() */
#define KLPT_FORCE             9   /* klp_force_transition() */
#define KLPT_MODULE_COMING    10   /* klp_module_coming(mod): module */
#define KLPT_MODULE_COMING_RET 11  /* klp_module_coming returned: ret, module */
#define KLPT_MODULE_GOING     12   /* klp_module_going(mod): module */
#define KLPT_UNPATCH_OBJECT   13   /* klp_unpatch_object(obj) in a module coming/going: objs[0] */
#define KLPT_DIRECT           14   /* a livepatch callback function itself was entered: objs[0], ip */
#define KLPT_DIRECT_RET       15   /* ... and returned: objs[0], ip, ret */
#define KLPT_CORE             16   /* an out-of-line klp_*_callback helper: objs[0], arg = callback index */
#define KLPT_MODULE_GOING_RET 17   /* klp_module_going returned: module */

/* Context of the current task (ctx field): which core operation it is inside. */
#define KLPT_CTX_NONE    0
#define KLPT_CTX_COMING  1
#define KLPT_CTX_GOING   2

/* callback index, the order of struct klp_callbacks */
#define KLPT_CB_PRE_PATCH    0
#define KLPT_CB_POST_PATCH   1
#define KLPT_CB_PRE_UNPATCH  2
#define KLPT_CB_POST_UNPATCH 3

struct klpt_obj {
	char name[KLPT_NAME_LEN];       /* "" = vmlinux (obj->name == NULL) */
	unsigned long long cb[4];       /* obj->callbacks.{pre_patch,...,post_unpatch} */
	unsigned char loaded;           /* klp_is_object_loaded(): !obj->name || obj->mod */
	unsigned char patched;          /* obj->patched */
	unsigned char post_unpatch_enabled;
	unsigned char dynamic;          /* a nop object added for atomic replace */
	unsigned char armed[4];         /* a direct probe on cb[i] was armed at snapshot time */
};

struct klpt_event {
	unsigned long long ts_ns;       /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	unsigned long long ip;          /* KLPT_DIRECT*: the probed address */
	long long arg;                  /* state / ret / callback index, per kind */
	unsigned long long lost;        /* `lost` counter when this event was reserved: an
	                                   increase since the previous event is a gap
	                                   right before this one */
	unsigned int kind;
	unsigned int pid;
	unsigned int ctx;               /* KLPT_CTX_* of the current task */
	unsigned int nobjs;             /* valid entries in objs */
	unsigned int nobjs_total;       /* objects the patch has (nobjs may be capped) */
	unsigned int replace;           /* patch->replace */
	char patch[KLPT_NAME_LEN];      /* patch->mod->name */
	char module[KLPT_NAME_LEN];     /* KLPT_MODULE_*: mod->name */
	struct klpt_obj objs[KLPT_MAX_OBJS];
};

/* Indices of the per-point hit counters (BPF array `hits`). */
#define KLPT_HIT_SLOTS 24

#endif /* KLPTRACE_H */
