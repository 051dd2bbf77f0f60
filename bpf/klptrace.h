/* SPDX-License-Identifier: GPL-2.0 */
/*
 * klptrace.h - the one event layout shared by the BPF programs (bpf/klptrace.bpf.c)
 * and the Python loader (tracer/rawevents.py mirrors it with ctypes; a test
 * checks that the enums and sizes agree). Every BPF program writes one
 * struct klpt_event into the ring buffer; which fields mean something depends
 * on `kind`.
 */
#ifndef KLPTRACE_H
#define KLPTRACE_H

#define KLPT_NAME_LEN   56  /* MODULE_NAME_LEN on 64-bit */
#define KLPT_CHUNK_OBJS 8   /* objects per snapshot event */
/* A patch snapshot is a chain of events of KLPT_CHUNK_OBJS objects each (one
 * tail call per event). The kernel allows 33 tail calls in a chain and the
 * probe's jump into the snapshot program is the first: KLPT_MAX_CHUNKS * 8 =
 * 256 objects per patch; a patch with more is marked KLPT_SNAP_TRUNCATED in
 * its last event (docs/probes.md, "Bounds"). */
#define KLPT_MAX_CHUNKS 32

/* Event kinds: one per observation point (see docs/probes.md). */
enum klpt_kind {
	KLPT_ENABLE_RET        = 1,   /* klp_enable_patch returned: arg = ret */
	KLPT_INIT_TRANSITION   = 2,   /* klp_init_transition(patch, state): snapshot, arg = state */
	KLPT_PATCH_OBJECT      = 3,   /* klp_patch_object(obj) entry: objs[0] */
	KLPT_PATCH_OBJECT_RET  = 4,   /* klp_patch_object returned (module coming only): arg = ret */
	KLPT_START_TRANSITION  = 5,   /* klp_start_transition(): snapshot of the transition patch */
	KLPT_COMPLETE          = 6,   /* klp_complete_transition() entry: snapshot */
	KLPT_CANCEL            = 7,   /* klp_cancel_transition(): snapshot */
	KLPT_REVERSE           = 8,   /* klp_reverse_transition() */
	KLPT_FORCE             = 9,   /* klp_force_transition() */
	KLPT_MODULE_COMING     = 10,  /* klp_module_coming(mod): module */
	KLPT_MODULE_COMING_RET = 11,  /* klp_module_coming returned: arg = ret, module */
	KLPT_MODULE_GOING      = 12,  /* klp_module_going(mod): module */
	KLPT_UNPATCH_OBJECT    = 13,  /* klp_unpatch_object(obj) in a module coming/going: objs[0] */
	KLPT_DIRECT            = 14,  /* a livepatch callback function was entered: objs[0], ip */
	KLPT_DIRECT_RET        = 15,  /* ... and returned: objs[0], ip, arg = ret */
	KLPT_CORE              = 16,  /* an out-of-line klp_*_callback helper: objs[0], arg = callback */
	KLPT_MODULE_GOING_RET  = 17,  /* klp_module_going returned: module */
	KLPT_COMPLETE_RET      = 18,  /* klp_complete_transition returned: its callbacks are over */
};

/* Context of the current task (ctx field): which core operation it is inside. */
enum klpt_ctx {
	KLPT_CTX_NONE   = 0,
	KLPT_CTX_COMING = 1,
	KLPT_CTX_GOING  = 2,
};

/* snap field of a patch snapshot event */
enum klpt_snap {
	KLPT_SNAP_LAST      = 0,   /* the last event of this snapshot */
	KLPT_SNAP_MORE      = 1,   /* another event of this snapshot follows */
	KLPT_SNAP_TRUNCATED = 2,   /* last event, but the patch has more objects than the bound */
};

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
	unsigned char pad[4];
};

struct klpt_event {
	unsigned long long ts_ns;       /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	unsigned long long ip;          /* KLPT_DIRECT*: the probed address */
	long long arg;                  /* state / ret / callback index, per kind */
	unsigned long long lost;        /* `lost` counter when this event was reserved: an
	                                   increase since the previous event is a gap
	                                   right before this one */
	unsigned int kind;              /* enum klpt_kind */
	unsigned int pid;               /* thread id */
	unsigned int ctx;               /* enum klpt_ctx of the current task */
	unsigned int nobjs;             /* valid entries in objs */
	unsigned int chunk;             /* snapshot events: index of this event in its chain */
	unsigned int snap;              /* snapshot events: enum klpt_snap */
	unsigned int replace;           /* patch->replace */
	unsigned int pad;
	char patch[KLPT_NAME_LEN];      /* patch->mod->name */
	char module[KLPT_NAME_LEN];     /* KLPT_MODULE_*: mod->name */
	struct klpt_obj objs[KLPT_CHUNK_OBJS];
};

/* Indices of the per-program hit counters (BPF array `hits`), exported as
 * klptrace_probe_hits_total{program}; tracer/rawevents.py names them. */
enum klpt_hit {
	KLPT_HIT_ENABLE, KLPT_HIT_ENABLE_RET, KLPT_HIT_INIT, KLPT_HIT_START,
	KLPT_HIT_COMPLETE, KLPT_HIT_CANCEL, KLPT_HIT_REVERSE, KLPT_HIT_FORCE,
	KLPT_HIT_PATCH_OBJECT, KLPT_HIT_PATCH_OBJECT_RET, KLPT_HIT_UNPATCH_OBJECT,
	KLPT_HIT_MODULE_COMING, KLPT_HIT_MODULE_COMING_RET, KLPT_HIT_MODULE_GOING,
	KLPT_HIT_MODULE_GOING_RET, KLPT_HIT_CORE, KLPT_HIT_DIRECT, KLPT_HIT_DIRECT_RET,
	KLPT_HIT_COMPLETE_RET,
	KLPT_HIT_SLOTS
};

#endif /* KLPTRACE_H */
