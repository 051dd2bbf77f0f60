/* SPDX-License-Identifier: GPL-2.0 */
/*
 * klptrace.h - the one event layout shared by the BPF programs (bpf/klptrace.bpf.c)
 * and the Python loader (tracer/observe/rawevents.py mirrors it with ctypes;
 * tests/unit/test_event_layout.py compiles this header and checks every
 * member's offset and size, every enum value and macro, against the mirror). Every BPF program writes one
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
 * klptrace_probe_hits_total{program}; tracer/observe/rawevents.py names them. */
enum klpt_hit {
	KLPT_HIT_ENABLE, KLPT_HIT_ENABLE_RET, KLPT_HIT_INIT, KLPT_HIT_START,
	KLPT_HIT_COMPLETE, KLPT_HIT_CANCEL, KLPT_HIT_REVERSE, KLPT_HIT_FORCE,
	KLPT_HIT_PATCH_OBJECT, KLPT_HIT_PATCH_OBJECT_RET, KLPT_HIT_UNPATCH_OBJECT,
	KLPT_HIT_MODULE_COMING, KLPT_HIT_MODULE_COMING_RET, KLPT_HIT_MODULE_GOING,
	KLPT_HIT_MODULE_GOING_RET, KLPT_HIT_CORE, KLPT_HIT_DIRECT, KLPT_HIT_DIRECT_RET,
	KLPT_HIT_COMPLETE_RET,
	/* stalls (appended: the slots above keep their numbers) */
	KLPT_HIT_STALL_CHECK, KLPT_HIT_STALL_CHECK_RET, KLPT_HIT_STALL_SWITCH,
	KLPT_HIT_STALL_SWITCH_RET, KLPT_HIT_STALL_SWEEP, KLPT_HIT_STALL_SWEEP_RET,
	KLPT_HIT_SLOTS
};

/* ---- stalls: tasks that keep a transition open (bpf/klptrace.bpf.c, section
 * "stalls"; tracer/observe/stalls.py reads the tables on its poll tick) ---------------- */

#define KLPT_COMM_LEN   16   /* TASK_COMM_LEN */
#define KLPT_FUNC_LEN   128  /* func->old_name, cut at 127 bytes (KSYM_NAME_LEN was 128 before 6.1) */
/* Tasks tracked at once in `stall_tasks`. A task is there from its first
 * failed check to its switch (or the end of the transition); beyond this,
 * failed checks of new tasks are counted in klpt_sweeps.overflow. */
#define KLPT_STALL_SLOTS 4096
/* kernel/livepatch/transition.c SIGNALS_TIMEOUT: the remaining tasks are
 * signalled on every 15th sweep that left tasks behind */
#define KLPT_SIGNALS_TIMEOUT 15
/* klp_check_and_switch_task's "a function being (un)patched is on the stack":
 * only then does *arg name it (func->old_name) */
#define KLPT_EADDRINUSE 98

/* Where a blocker's entry came from (klpt_blocker.source). */
enum klpt_stall_source {
	KLPT_STALL_FROM_CHECK  = 1,   /* klp_check_and_switch_task returned ret (5.16+) */
	KLPT_STALL_FROM_SWITCH = 2,   /* klp_try_switch_task returned false (older kernels: no reason) */
};

/* One task that has not switched, keyed by its task_struct pointer (idle
 * tasks all have pid 0). Written by the check probes, read (and pruned) by
 * the daemon; "window" numbers count the sweeps started in the transition. */
struct klpt_blocker {
	unsigned long long first_ns;    /* first failed check in this transition */
	unsigned long long last_ns;     /* the last failed check */
	unsigned long long checks;      /* failed checks so far */
	unsigned long long gen;         /* transition generation: hits of init + reverse */
	int ret;                        /* what the last check returned (FROM_SWITCH: 0) */
	unsigned int source;            /* enum klpt_stall_source */
	unsigned int pid;               /* task->pid: the thread id */
	unsigned int tgid;              /* task->tgid */
	unsigned int flags;             /* task->flags (PF_KTHREAD 0x00200000) */
	unsigned int first_window;      /* sweeps started before the first failure */
	unsigned int last_window;       /* ... before the last one */
	unsigned int pad;
	char comm[KLPT_COMM_LEN];       /* task->comm */
	char func[KLPT_FUNC_LEN];       /* ret == -EADDRINUSE: func->old_name; else "" */
};

/* The sweeps (klp_try_complete_transition) of the transition in progress:
 * one entry, written only under klp_mutex (sweeps never overlap). */
struct klpt_sweeps {
	unsigned long long gen;         /* the generation the counters are for */
	unsigned long long gen_ns;      /* the first sweep of that generation began */
	unsigned long long start_ns;    /* the sweep in progress began (0: none) */
	unsigned long long done_start_ns;  /* the last completed sweep began (0: none yet) */
	unsigned long long done_end_ns; /* ... and returned */
	unsigned long long signal_ns;   /* the last sweep that signalled the remaining tasks */
	unsigned long long overflow;    /* failed checks not stored: stall_tasks full (never reset) */
	unsigned long long complete_mark;  /* hits of klp_complete_transition at the sweep's entry */
	unsigned int started;           /* sweeps started in this generation */
	unsigned int incomplete;        /* sweeps that left tasks behind: the kernel's klp_signals_cnt */
	unsigned int signals;           /* sweeps that signalled the remaining tasks */
	unsigned int pad;
};

#endif /* KLPTRACE_H */
