// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace.bpf.c - kprobe programs on the livepatch core's out-of-line
 * functions and on livepatch callback functions (bcc C).
 *
 * Each program only takes a snapshot of what the kernel holds at that point
 * (struct klp_patch / klp_object: callback pointers, post_unpatch_enabled,
 * patched, obj->mod) and writes one struct klpt_event to the ring buffer.
 * All reasoning about which callbacks ran lives in Python (tracer/infer.py),
 * where it can be tested and documented (docs/probes.md).
 *
 * Loaded with BPF(src_file=..., cflags=["-I<bpf dir>"]) only. Every function
 * probed here runs only during livepatch operations (or, for
 * klp_module_coming/going, once per module load/unload).
 */
#include <uapi/linux/ptrace.h>
#include <linux/module.h>
#include <linux/livepatch.h>
#include "klptrace.h"

#ifndef KLPT_RING_PAGES
#define KLPT_RING_PAGES 64                      /* klptrace run --ring-pages */
#endif
BPF_RINGBUF_OUTPUT(events, KLPT_RING_PAGES);    /* a power of two of pages */
BPF_ARRAY(lost, u64, 1);                        /* failed ring buffer reservations */
BPF_ARRAY(hits, u64, KLPT_HIT_SLOTS);            /* per-program hit counters */
BPF_ARRAY(cur_patch, u64, 1);                   /* klp_transition_patch, seen at klp_init_transition */
BPF_HASH(task_ctx, u32, u32, 64);               /* tid -> KLPT_CTX_* inside klp_module_coming/going */
BPF_HASH(enable_arg, u32, u64, 64);             /* tid -> patch, for klp_enable_patch's return */
BPF_HASH(coming_arg, u32, u64, 64);             /* tid -> mod, for klp_module_coming's/going's return */
BPF_HASH(patch_obj_arg, u32, u64, 64);          /* tid -> obj, for klp_patch_object's return */
/* tid -> obj / probed address, from a callback's entry to its return. Only an
 * entry probe whose return is probed too (pre_patch's) stores here: the other
 * callbacks return void and have no return probe, so their entries would never
 * be deleted, and a long run filled the table (one entry per task that ever ran
 * a callback: insmod, the sysfs writer) until pre_patch's entry could no longer
 * store and its return record was silently lost (found by make stress at cycle
 * 70 of 200). LRU as well: an entry whose return never fires (a kretprobe
 * miss) is evicted instead of taking a slot for good. */
BPF_TABLE("lru_hash", u32, u64, direct_arg, 1024);
BPF_TABLE("lru_hash", u32, u64, direct_ip, 1024);
BPF_HASH(armed, u64, u8, 1024);                 /* callback address -> direct probe armed (set by Python) */

/*
 * The snapshot code (a walk over the patch's objects) exists once, in two
 * tail-called programs; each probe only fills this per-CPU scratch and jumps.
 * Inlining it into every probe made the bcc compile take over a minute under
 * TCG. The tail call runs synchronously on the same CPU, so the scratch is safe.
 */
struct scratch {
	u64 ptr;        /* struct klp_patch * or struct klp_object * */
	u64 ip;
	s64 arg;
	u32 kind;
};
BPF_PERCPU_ARRAY(scratch, struct scratch, 1);
BPF_PROG_ARRAY(snap, 2);                        /* 0: do_snap_patch, 1: do_snap_obj (set by Python) */
#define SNAP_PATCH 0
#define SNAP_OBJ   1

static __always_inline void hit(int slot)
{
	u64 *v = hits.lookup(&slot);
	if (v)
		lock_xadd(v, 1);
}

static __always_inline u32 tid(void)
{
	return (u32)bpf_get_current_pid_tgid();
}

static __always_inline struct klpt_event *new_event(u32 kind)
{
	int zero = 0;
	u64 *v = lost.lookup(&zero);
	struct klpt_event *e = events.ringbuf_reserve(sizeof(struct klpt_event));
	if (!e) {
		if (v)
			lock_xadd(v, 1);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->lost = v ? *v : 0;   /* read after the reservation: every earlier loss is in it */
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->pid = tid();
	u32 t = tid();
	u32 *c = task_ctx.lookup(&t);
	if (c)
		e->ctx = *c;
	return e;
}

static __always_inline void read_patch_name(char *dst, struct klp_patch *patch)
{
	struct module *mod = NULL;
	bpf_probe_read_kernel(&mod, sizeof(mod), &patch->mod);
	if (mod)
		bpf_probe_read_kernel_str(dst, KLPT_NAME_LEN, mod->name);
}

static __always_inline void fill_obj(struct klpt_obj *o, struct klp_object *obj)
{
	const char *name = NULL;
	struct module *mod = NULL;
	struct klp_callbacks cbs = {};
	bool b = 0;

	bpf_probe_read_kernel(&name, sizeof(name), &obj->name);
	if (name)
		bpf_probe_read_kernel_str(o->name, KLPT_NAME_LEN, name);
	bpf_probe_read_kernel(&mod, sizeof(mod), &obj->mod);
	o->loaded = !name || mod;
	bpf_probe_read_kernel(&cbs, sizeof(cbs), &obj->callbacks);
	o->cb[0] = (u64)cbs.pre_patch;
	o->cb[1] = (u64)cbs.post_patch;
	o->cb[2] = (u64)cbs.pre_unpatch;
	o->cb[3] = (u64)cbs.post_unpatch;
	o->post_unpatch_enabled = cbs.post_unpatch_enabled;
	bpf_probe_read_kernel(&b, sizeof(b), &obj->patched);
	o->patched = b;
	bpf_probe_read_kernel(&b, sizeof(b), &obj->dynamic);
	o->dynamic = b;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		u64 a = o->cb[i];
		if (a && armed.lookup(&a))
			o->armed[i] = 1;
	}
}

/* The patch owning obj: obj->kobj.parent is &patch->kobj (klp_init_object). */
static __always_inline struct klp_patch *patch_of(struct klp_object *obj)
{
	struct kobject *parent = NULL;
	bpf_probe_read_kernel(&parent, sizeof(parent), &obj->kobj.parent);
	if (!parent)
		return NULL;
	return container_of(parent, struct klp_patch, kobj);
}

static __always_inline void fill_one_obj(struct klpt_event *e, struct klp_object *obj)
{
	struct klp_patch *patch = patch_of(obj);
	if (patch) {
		read_patch_name(e->patch, patch);
		bpf_probe_read_kernel(&e->replace, 1, &patch->replace);
	}
	fill_obj(&e->objs[0], obj);
	e->nobjs = 1;
	e->nobjs_total = 1;
}

/* Walk patch->obj_list (klp_for_each_object: static and dynamic objects). */
static __always_inline void fill_patch(struct klpt_event *e, struct klp_patch *patch)
{
	struct list_head *head = &patch->obj_list;
	struct list_head *pos = NULL;

	read_patch_name(e->patch, patch);
	bpf_probe_read_kernel(&e->replace, 1, &patch->replace);
	bpf_probe_read_kernel(&pos, sizeof(pos), &head->next);
	for (int i = 0; i < KLPT_MAX_OBJS; i++) {     /* bounded loop, not unrolled */
		if (!pos || pos == head)
			return;
		fill_obj(&e->objs[i], container_of(pos, struct klp_object, node));
		e->nobjs = i + 1;
		e->nobjs_total = i + 1;
		bpf_probe_read_kernel(&pos, sizeof(pos), &pos->next);
	}
	if (pos && pos != head)
		e->nobjs_total = KLPT_MAX_OBJS + 1;    /* more than we could copy */
}

static __always_inline int jump(struct pt_regs *ctx, int prog, u32 kind, u64 ptr,
				s64 arg, u64 ip)
{
	int zero = 0;
	struct scratch *sc = scratch.lookup(&zero);
	if (!sc)
		return 0;
	sc->kind = kind;
	sc->ptr = ptr;
	sc->arg = arg;
	sc->ip = ip;
	snap.call(ctx, prog);
	return 0;       /* only reached if the tail call failed */
}

static __always_inline int snapshot_current(struct pt_regs *ctx, u32 kind, int slot)
{
	hit(slot);
	int zero = 0;
	u64 *p = cur_patch.lookup(&zero);
	return jump(ctx, SNAP_PATCH, kind, p ? *p : 0, 0, 0);
}

int do_snap_patch(struct pt_regs *ctx)
{
	int zero = 0;
	struct scratch *sc = scratch.lookup(&zero);
	if (!sc)
		return 0;
	struct klpt_event *e = new_event(sc->kind);
	if (!e)
		return 0;
	e->arg = sc->arg;
	if (sc->ptr)
		fill_patch(e, (struct klp_patch *)sc->ptr);
	events.ringbuf_submit(e, 0);
	return 0;
}

int do_snap_obj(struct pt_regs *ctx)
{
	int zero = 0;
	struct scratch *sc = scratch.lookup(&zero);
	if (!sc)
		return 0;
	struct klpt_event *e = new_event(sc->kind);
	if (!e)
		return 0;
	e->arg = sc->arg;
	e->ip = sc->ip;
	if (sc->ptr)
		fill_one_obj(e, (struct klp_object *)sc->ptr);
	events.ringbuf_submit(e, 0);
	return 0;
}

/* ---- enable ------------------------------------------------------------- */

int on_enable_patch(struct pt_regs *ctx, struct klp_patch *patch)
{
	hit(0);
	u32 t = tid();
	u64 p = (u64)patch;
	enable_arg.update(&t, &p);
	return 0;
}

int on_enable_patch_ret(struct pt_regs *ctx)
{
	hit(1);
	u32 t = tid();
	u64 *p = enable_arg.lookup(&t);
	struct klpt_event *e = new_event(KLPT_ENABLE_RET);
	if (e) {
		e->arg = (int)PT_REGS_RC(ctx);
		if (p)
			read_patch_name(e->patch, (struct klp_patch *)*p);
		events.ringbuf_submit(e, 0);
	}
	enable_arg.delete(&t);
	return 0;
}

/* ---- transitions ---------------------------------------------------------- */

int on_init_transition(struct pt_regs *ctx, struct klp_patch *patch, int state)
{
	hit(2);
	int zero = 0;
	u64 p = (u64)patch;
	cur_patch.update(&zero, &p);
	return jump(ctx, SNAP_PATCH, KLPT_INIT_TRANSITION, p, state, 0);
}

int on_start_transition(struct pt_regs *ctx)    { return snapshot_current(ctx, KLPT_START_TRANSITION, 3); }
int on_complete_transition(struct pt_regs *ctx) { return snapshot_current(ctx, KLPT_COMPLETE, 4); }
int on_cancel_transition(struct pt_regs *ctx)   { return snapshot_current(ctx, KLPT_CANCEL, 5); }
int on_reverse_transition(struct pt_regs *ctx)  { return snapshot_current(ctx, KLPT_REVERSE, 6); }
int on_force_transition(struct pt_regs *ctx)    { return snapshot_current(ctx, KLPT_FORCE, 7); }

/* ---- objects -------------------------------------------------------------- */

int on_patch_object(struct pt_regs *ctx, struct klp_object *obj)
{
	hit(8);
	u32 t = tid();
	u64 o = (u64)obj;
	patch_obj_arg.update(&t, &o);
	return jump(ctx, SNAP_OBJ, KLPT_PATCH_OBJECT, o, 0, 0);
}

/* Only a module coming needs the result: post_patch follows a successful
 * klp_patch_object there unless the patch is in transition. */
int on_patch_object_ret(struct pt_regs *ctx)
{
	hit(9);
	u32 t = tid();
	u64 *o = patch_obj_arg.lookup(&t);
	u32 *c = task_ctx.lookup(&t);
	u64 obj = o ? *o : 0;
	patch_obj_arg.delete(&t);
	if (obj && c && *c == KLPT_CTX_COMING)
		jump(ctx, SNAP_OBJ, KLPT_PATCH_OBJECT_RET, obj, (int)PT_REGS_RC(ctx), 0);
	return 0;
}

/* Only inside klp_module_coming (error cleanup) / klp_module_going: there the
 * pre_unpatch and post_unpatch callbacks bracket this call. */
int on_unpatch_object(struct pt_regs *ctx, struct klp_object *obj)
{
	hit(10);
	u32 t = tid();
	if (!task_ctx.lookup(&t))
		return 0;
	return jump(ctx, SNAP_OBJ, KLPT_UNPATCH_OBJECT, (u64)obj, 0, 0);
}

/* ---- modules -------------------------------------------------------------- */

static __always_inline int module_event(u32 kind, int slot, struct module *mod, u32 c)
{
	hit(slot);
	u32 t = tid();
	task_ctx.update(&t, &c);
	struct klpt_event *e = new_event(kind);
	if (!e)
		return 0;
	bpf_probe_read_kernel_str(e->module, KLPT_NAME_LEN, mod->name);
	events.ringbuf_submit(e, 0);
	return 0;
}

int on_module_coming(struct pt_regs *ctx, struct module *mod)
{
	u32 t = tid();
	u64 m = (u64)mod;
	coming_arg.update(&t, &m);
	return module_event(KLPT_MODULE_COMING, 11, mod, KLPT_CTX_COMING);
}

int on_module_coming_ret(struct pt_regs *ctx)
{
	hit(12);
	u32 t = tid();
	u64 *m = coming_arg.lookup(&t);
	struct klpt_event *e = new_event(KLPT_MODULE_COMING_RET);
	if (e) {
		e->arg = (int)PT_REGS_RC(ctx);
		if (m)
			bpf_probe_read_kernel_str(e->module, KLPT_NAME_LEN,
						  ((struct module *)*m)->name);
		events.ringbuf_submit(e, 0);
	}
	coming_arg.delete(&t);
	task_ctx.delete(&t);
	return 0;
}

int on_module_going(struct pt_regs *ctx, struct module *mod)
{
	u32 t = tid();
	u64 m = (u64)mod;
	coming_arg.update(&t, &m);
	return module_event(KLPT_MODULE_GOING, 13, mod, KLPT_CTX_GOING);
}

/* The entry probes of klp_module_coming/going fire before they take
 * klp_mutex; the returns tell userspace that the section is over, so a
 * `going` record is placed even when no patch had an object for the module
 * (tracer/infer.py, _place_pending). */
int on_module_going_ret(struct pt_regs *ctx)
{
	hit(14);
	u32 t = tid();
	u64 *m = coming_arg.lookup(&t);
	struct klpt_event *e = new_event(KLPT_MODULE_GOING_RET);
	if (e) {
		if (m)
			bpf_probe_read_kernel_str(e->module, KLPT_NAME_LEN,
						  ((struct module *)*m)->name);
		events.ringbuf_submit(e, 0);
	}
	coming_arg.delete(&t);
	task_ctx.delete(&t);
	return 0;
}

/* ---- callbacks themselves --------------------------------------------------- */

/* core: an out-of-line klp_*_callback(obj) helper (where the kernel has one). */
static __always_inline int core_event(struct pt_regs *ctx, struct klp_object *obj, int idx)
{
	hit(15 + idx);
	return jump(ctx, SNAP_OBJ, KLPT_CORE, (u64)obj, idx, 0);
}

int on_core_pre_patch(struct pt_regs *ctx, struct klp_object *obj)    { return core_event(ctx, obj, 0); }
int on_core_post_patch(struct pt_regs *ctx, struct klp_object *obj)   { return core_event(ctx, obj, 1); }
int on_core_pre_unpatch(struct pt_regs *ctx, struct klp_object *obj)  { return core_event(ctx, obj, 2); }
int on_core_post_unpatch(struct pt_regs *ctx, struct klp_object *obj) { return core_event(ctx, obj, 3); }

/* direct: a kprobe on the livepatch module's callback function; its first
 * argument is the struct klp_object it runs for. on_direct_pre is the entry
 * program of a function whose return is probed too (on_direct_ret). */
int on_direct(struct pt_regs *ctx)
{
	hit(19);
	u64 o = (u64)PT_REGS_PARM1(ctx);
	return jump(ctx, SNAP_OBJ, KLPT_DIRECT, o, 0, PT_REGS_IP(ctx));
}

int on_direct_pre(struct pt_regs *ctx)
{
	hit(19);
	u32 t = tid();
	u64 o = (u64)PT_REGS_PARM1(ctx);
	u64 ip = PT_REGS_IP(ctx);
	direct_arg.update(&t, &o);
	direct_ip.update(&t, &ip);
	return jump(ctx, SNAP_OBJ, KLPT_DIRECT, o, 0, ip);
}

int on_direct_ret(struct pt_regs *ctx)
{
	hit(20);
	u32 t = tid();
	u64 *o = direct_arg.lookup(&t);
	u64 *ipp = direct_ip.lookup(&t);
	u64 obj = o ? *o : 0, ip = ipp ? *ipp : 0;
	direct_arg.delete(&t);
	direct_ip.delete(&t);
	if (obj)
		jump(ctx, SNAP_OBJ, KLPT_DIRECT_RET, obj, (int)PT_REGS_RC(ctx), ip);
	return 0;
}
