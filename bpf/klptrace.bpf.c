// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace.bpf.c - kprobe programs on the livepatch core's out-of-line
 * functions and on livepatch callback functions (bcc C).
 *
 * Each program only takes a snapshot of what the kernel holds at that point
 * (struct klp_patch / klp_object: callback pointers, post_unpatch_enabled,
 * patched, obj->mod) and writes one struct klpt_event to the ring buffer.
 * All reasoning about which callbacks ran lives in Python (tracer/observe/infer.py),
 * where it can be tested and documented (docs/probes.md).
 *
 * Loaded with BPF(src_file=..., cflags=["-I<bpf dir>", -D...]) only. Every
 * function probed here runs only during livepatch operations (or, for
 * klp_module_coming/going, once per module load/unload).
 *
 * Kernel structs are read at byte offsets (KLPT_OFF_*) that
 * tracer/observe/btf.py (WANTED, the one list) takes from the running
 * kernel's BTF and passes as -D macros: including <linux/module.h> and
 * <linux/livepatch.h> for them was two thirds of the bcc compile. A kernel
 * without BTF is built with KLPT_USE_HEADERS and the same macros as
 * offsetof() expressions over those headers.
 */
#include <uapi/linux/ptrace.h>
#include "klptrace.h"

#ifdef KLPT_USE_HEADERS
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/sched.h>
#endif

/* obj->callbacks.{pre_patch, post_patch, pre_unpatch, post_unpatch}: four
 * pointers at the start of struct klp_callbacks (include/linux/livepatch.h,
 * unchanged since 4.15) */
#define KLPT_CALLBACK_PTRS 4

/* a kernel pointer (or a byte) at base + off; 0 when the read fails */
static __always_inline u64 rd_ptr(u64 base, u64 off)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
	return v;
}

static __always_inline u8 rd_u8(u64 base, u64 off)
{
	u8 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
	return v;
}

#ifndef KLPT_RING_PAGES
#define KLPT_RING_PAGES 64                      /* klptrace run --ring-pages */
#endif
/* Per-thread tables hold an entry from a function's entry to its return,
 * only while a livepatch operation or a module load/unload is in flight: a
 * handful at a time, more at boot when udev loads modules in parallel. LRU,
 * so an entry whose return never fires (a kretprobe miss) is evicted instead
 * of taking a slot for good; an in-flight entry evicted under pressure shows
 * up in userspace as a return without its entry, which is reported as a gap.
 * docs/probes.md "Bounds" lists every size. */
#define KLPT_TASK_SLOTS 4096

BPF_RINGBUF_OUTPUT(events, KLPT_RING_PAGES);    /* a power of two of pages */
BPF_ARRAY(lost, u64, 1);                        /* failed ring buffer reservations */
BPF_ARRAY(pending, u64, 1);                     /* events since the daemon last read (it resets it) */
BPF_ARRAY(hits, u64, KLPT_HIT_SLOTS);           /* per-program hit counters (enum klpt_hit) */
BPF_ARRAY(cur_patch, u64, 1);                   /* klp_transition_patch, seen at klp_init_transition */
BPF_TABLE("lru_hash", u32, u32, task_ctx, KLPT_TASK_SLOTS);      /* tid -> enum klpt_ctx */
BPF_TABLE("lru_hash", u32, u64, enable_arg, KLPT_TASK_SLOTS);    /* tid -> patch, for klp_enable_patch's return */
/* tid -> the module section in flight: klp_module_coming/going's entry to its return */
struct section {
	u64 mod;        /* struct module * */
	u64 mark;       /* object hits at the entry (module_return) */
};
BPF_TABLE("lru_hash", u32, struct section, module_section, KLPT_TASK_SLOTS);
BPF_TABLE("lru_hash", u32, u64, patch_obj_arg, KLPT_TASK_SLOTS); /* tid -> obj, for klp_patch_object's return */
/* tid -> obj / probed address, from a callback's entry to its return. Only an
 * entry probe whose return is probed too (pre_patch's) stores here: the other
 * callbacks return void and have no return probe, so their entries would
 * never be deleted. */
BPF_TABLE("lru_hash", u32, u64, direct_arg, KLPT_TASK_SLOTS);
BPF_TABLE("lru_hash", u32, u64, direct_ip, KLPT_TASK_SLOTS);

/*
 * The snapshot code (a walk over the patch's objects) exists once, in two
 * tail-called programs; each probe only fills this per-CPU scratch and jumps.
 * Inlining it into every probe made the bcc compile take over a minute under
 * TCG. The tail call runs synchronously on the same CPU, so the scratch is
 * safe. A patch snapshot longer than KLPT_CHUNK_OBJS objects continues in the
 * next event: do_snap_patch tail-calls itself with the list position saved here.
 */
struct scratch {
	u64 ptr;        /* struct klp_patch * or struct klp_object * */
	u64 pos;        /* do_snap_patch: the next list node of obj_list */
	u64 ip;
	s64 arg;
	u32 kind;
	u32 chunk;      /* do_snap_patch: index of the next event of the chain */
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

static __always_inline u64 hits_of(int slot)
{
	u64 *v = hits.lookup(&slot);
	return v ? *v : 0;
}

/*
 * Wake-ups. An event is submitted without waking the daemon: on a small host
 * a wake-up per event let the daemon preempt the very task that enables the
 * patch (docs/benchmarks.md: enabling took twice as long on one CPU). The
 * daemon is woken only when the ring buffer is a quarter full (about 70
 * events with the default 64 pages; a livepatch operation writes tens) or at
 * the end of an operation: klp_enable_patch or klp_complete_transition
 * returning, or klp_module_coming / klp_module_going returning from work on
 * a patched object or a refusal (module_return()). Not at every module load:
 * a livepatch module's own klp_module_coming comes right before its
 * klp_enable_patch, which a wake-up there would slow. So records still come
 * in kernel order, soon after the operation, and the daemon sleeps through it.
 * What no wake-up announces (a disable whose transition stays open) is read
 * on the daemon's clock (tracer/daemon/runloop.py: IDLE_S).
 */
#define KLPT_WAKE_AT (KLPT_RING_PAGES * 4096 / (sizeof(struct klpt_event) + 8) / 4)

static __always_inline void submit(struct klpt_event *e, int end_of_operation)
{
	int zero = 0;
	u64 *n = pending.lookup(&zero);
	u64 before = 0;
	if (n) {
		before = *n;
		lock_xadd(n, 1);
	}
	events.ringbuf_submit(e, end_of_operation || before + 1 >= KLPT_WAKE_AT ?
			      BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
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

/* patch->mod->name */
static __always_inline void read_patch_name(char *dst, u64 patch)
{
	u64 mod = rd_ptr(patch, KLPT_OFF_PATCH_MOD);
	if (mod)
		bpf_probe_read_kernel_str(dst, KLPT_NAME_LEN, (void *)(mod + KLPT_OFF_MOD_NAME));
}

static __always_inline void fill_obj(struct klpt_obj *o, u64 obj)
{
	u64 name = rd_ptr(obj, KLPT_OFF_OBJ_NAME);
	u64 cbs[KLPT_CALLBACK_PTRS] = {};

	if (name)
		bpf_probe_read_kernel_str(o->name, KLPT_NAME_LEN, (void *)name);
	o->loaded = !name || rd_ptr(obj, KLPT_OFF_OBJ_MOD);
	bpf_probe_read_kernel(cbs, sizeof(cbs), (void *)(obj + KLPT_OFF_OBJ_CALLBACKS));
	o->cb[0] = cbs[0];
	o->cb[1] = cbs[1];
	o->cb[2] = cbs[2];
	o->cb[3] = cbs[3];
	o->post_unpatch_enabled = rd_u8(obj, KLPT_OFF_OBJ_CALLBACKS + KLPT_OFF_CB_PUE);
	o->patched = rd_u8(obj, KLPT_OFF_OBJ_PATCHED);
	o->dynamic = rd_u8(obj, KLPT_OFF_OBJ_DYNAMIC);
}

/* The patch owning obj: obj->kobj.parent is &patch->kobj (klp_init_object). */
static __always_inline u64 patch_of(u64 obj)
{
	u64 parent = rd_ptr(obj, KLPT_OFF_OBJ_KOBJ_PARENT);
	return parent ? parent - KLPT_OFF_PATCH_KOBJ : 0;
}

static __always_inline void fill_one_obj(struct klpt_event *e, u64 obj)
{
	u64 patch = patch_of(obj);
	if (patch) {
		read_patch_name(e->patch, patch);
		e->replace = rd_u8(patch, KLPT_OFF_PATCH_REPLACE);
	}
	fill_obj(&e->objs[0], obj);
	e->nobjs = 1;
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
	sc->pos = 0;
	sc->chunk = 0;
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

/* One event of a patch snapshot: the next KLPT_CHUNK_OBJS objects of
 * patch->obj_list (klp_for_each_object: static and dynamic objects), then,
 * if objects remain, itself again for the next event. */
int do_snap_patch(struct pt_regs *ctx)
{
	int zero = 0;
	struct scratch *sc = scratch.lookup(&zero);
	if (!sc)
		return 0;
	struct klpt_event *e = new_event(sc->kind);
	if (!e)
		return 0;       /* counted in `lost`: the rest of the chain is a gap */
	e->arg = sc->arg;
	e->chunk = sc->chunk;
	e->snap = KLPT_SNAP_LAST;
	if (sc->ptr) {
		u64 patch = sc->ptr;
		u64 head = patch + KLPT_OFF_PATCH_OBJ_LIST;     /* struct list_head: next at 0 */
		u64 pos = sc->pos;

		read_patch_name(e->patch, patch);
		e->replace = rd_u8(patch, KLPT_OFF_PATCH_REPLACE);
		if (!pos)
			pos = rd_ptr(head, 0);
		for (int i = 0; i < KLPT_CHUNK_OBJS; i++) {     /* bounded loop, not unrolled */
			if (!pos || pos == head)
				break;
			fill_obj(&e->objs[i], pos - KLPT_OFF_OBJ_NODE);
			e->nobjs = i + 1;
			pos = rd_ptr(pos, 0);
		}
		if (pos && pos != head) {
			if (sc->chunk + 1 < KLPT_MAX_CHUNKS) {
				e->snap = KLPT_SNAP_MORE;
				sc->pos = pos;
				sc->chunk++;
				submit(e, 0);
				snap.call(ctx, SNAP_PATCH);
				return 0;   /* tail call failed: userspace sees MORE with no next event */
			}
			e->snap = KLPT_SNAP_TRUNCATED;
		}
	}
	submit(e, 0);
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
		fill_one_obj(e, sc->ptr);
	submit(e, 0);
	return 0;
}

/* ---- enable ------------------------------------------------------------- */

int on_enable(struct pt_regs *ctx, void *patch)
{
	hit(KLPT_HIT_ENABLE);
	u32 t = tid();
	u64 p = (u64)patch;
	enable_arg.update(&t, &p);
	return 0;
}

int on_enable_ret(struct pt_regs *ctx)
{
	hit(KLPT_HIT_ENABLE_RET);
	u32 t = tid();
	u64 *p = enable_arg.lookup(&t);
	struct klpt_event *e = new_event(KLPT_ENABLE_RET);
	if (e) {
		e->arg = (int)PT_REGS_RC(ctx);
		if (p)
			read_patch_name(e->patch, *p);
		submit(e, 1);
	}
	enable_arg.delete(&t);
	return 0;
}

/* ---- transitions ---------------------------------------------------------- */

int on_init(struct pt_regs *ctx, void *patch, int state)
{
	hit(KLPT_HIT_INIT);
	int zero = 0;
	u64 p = (u64)patch;
	cur_patch.update(&zero, &p);
	return jump(ctx, SNAP_PATCH, KLPT_INIT_TRANSITION, p, state, 0);
}

int on_start(struct pt_regs *ctx)    { return snapshot_current(ctx, KLPT_START_TRANSITION, KLPT_HIT_START); }
int on_complete(struct pt_regs *ctx) { return snapshot_current(ctx, KLPT_COMPLETE, KLPT_HIT_COMPLETE); }
int on_cancel(struct pt_regs *ctx)   { return snapshot_current(ctx, KLPT_CANCEL, KLPT_HIT_CANCEL); }
int on_reverse(struct pt_regs *ctx)  { return snapshot_current(ctx, KLPT_REVERSE, KLPT_HIT_REVERSE); }
int on_force(struct pt_regs *ctx)    { return snapshot_current(ctx, KLPT_FORCE, KLPT_HIT_FORCE); }

/* klp_complete_transition returned: its post_patch / post_unpatch callbacks
 * are over (the end of the completion step in tracer/observe/infer.py). No patch
 * name: klp_transition_patch is NULL by now and the patch may be freed. */
int on_complete_ret(struct pt_regs *ctx)
{
	hit(KLPT_HIT_COMPLETE_RET);
	struct klpt_event *e = new_event(KLPT_COMPLETE_RET);
	if (e)
		submit(e, 1);
	return 0;
}

/* ---- objects -------------------------------------------------------------- */

int on_patch_object(struct pt_regs *ctx, void *obj)
{
	hit(KLPT_HIT_PATCH_OBJECT);
	u32 t = tid();
	u64 o = (u64)obj;
	patch_obj_arg.update(&t, &o);
	return jump(ctx, SNAP_OBJ, KLPT_PATCH_OBJECT, o, 0, 0);
}

/* Only a module coming needs the result: post_patch follows a successful
 * klp_patch_object there unless the patch is in transition. */
int on_patch_object_ret(struct pt_regs *ctx)
{
	hit(KLPT_HIT_PATCH_OBJECT_RET);
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
int on_unpatch_object(struct pt_regs *ctx, void *obj)
{
	hit(KLPT_HIT_UNPATCH_OBJECT);
	u32 t = tid();
	if (!task_ctx.lookup(&t))
		return 0;
	return jump(ctx, SNAP_OBJ, KLPT_UNPATCH_OBJECT, (u64)obj, 0, 0);
}

/* ---- modules -------------------------------------------------------------- */

static __always_inline void read_module_name(char *dst, u64 mod)
{
	bpf_probe_read_kernel_str(dst, KLPT_NAME_LEN, (void *)(mod + KLPT_OFF_MOD_NAME));
}

/* The object hits (klp_patch_object, klp_unpatch_object) so far: a module
 * section whose return sees them moved patched or unpatched an object. */
static __always_inline u64 object_hits(void)
{
	return hits_of(KLPT_HIT_PATCH_OBJECT) + hits_of(KLPT_HIT_UNPATCH_OBJECT);
}

/* A module section: klp_module_coming or klp_module_going, from its entry
 * (before it takes klp_mutex) to its return. The entry writes the
 * `coming`/`going` event and marks the thread's context; the return tells
 * userspace that the section is over, so a `going` record is placed even when
 * no patch had an object for the module (tracer/observe/infer.py,
 * _place_pending), and klp_module_coming's return value says whether the
 * module was refused. */
static __always_inline int module_entry(u32 kind, int slot, u64 mod, u32 c)
{
	hit(slot);
	u32 t = tid();
	struct section sec = {.mod = mod, .mark = object_hits()};
	task_ctx.update(&t, &c);
	module_section.update(&t, &sec);
	struct klpt_event *e = new_event(kind);
	if (!e)
		return 0;
	read_module_name(e->module, mod);
	submit(e, 0);
	return 0;
}

/* Does this return end livepatch work (then the daemon is woken)? Yes if it
 * failed (a refused module) or an object was (un)patched since its entry, or
 * if its entry is gone (evicted: wake rather than sit on it). Another
 * thread's operation can move the counters too (klp_mutex orders them, not
 * this): a spare wake-up, never a missed one. */
static __always_inline int module_return(u32 kind, int slot, int rc)
{
	hit(slot);
	u32 t = tid();
	struct section *sec = module_section.lookup(&t);
	int woke = rc != 0 || !sec || sec->mark != object_hits();
	struct klpt_event *e = new_event(kind);
	if (e) {
		e->arg = rc;
		if (sec)
			read_module_name(e->module, sec->mod);
		submit(e, woke);
	}
	module_section.delete(&t);
	task_ctx.delete(&t);
	return 0;
}

int on_module_coming(struct pt_regs *ctx, void *mod)
{
	return module_entry(KLPT_MODULE_COMING, KLPT_HIT_MODULE_COMING, (u64)mod, KLPT_CTX_COMING);
}

int on_module_coming_ret(struct pt_regs *ctx)
{
	return module_return(KLPT_MODULE_COMING_RET, KLPT_HIT_MODULE_COMING_RET,
			     (int)PT_REGS_RC(ctx));
}

int on_module_going(struct pt_regs *ctx, void *mod)
{
	return module_entry(KLPT_MODULE_GOING, KLPT_HIT_MODULE_GOING, (u64)mod, KLPT_CTX_GOING);
}

/* klp_module_going returns void: the section's end, no value */
int on_module_going_ret(struct pt_regs *ctx)
{
	return module_return(KLPT_MODULE_GOING_RET, KLPT_HIT_MODULE_GOING_RET, 0);
}

/* ---- callbacks themselves --------------------------------------------------- */

/* core: an out-of-line klp_*_callback(obj) helper (where the kernel has one). */
static __always_inline int core_event(struct pt_regs *ctx, void *obj, int idx)
{
	hit(KLPT_HIT_CORE);
	return jump(ctx, SNAP_OBJ, KLPT_CORE, (u64)obj, idx, 0);
}

int on_core_pre_patch(struct pt_regs *ctx, void *obj)    { return core_event(ctx, obj, KLPT_CB_PRE_PATCH); }
int on_core_post_patch(struct pt_regs *ctx, void *obj)   { return core_event(ctx, obj, KLPT_CB_POST_PATCH); }
int on_core_pre_unpatch(struct pt_regs *ctx, void *obj)  { return core_event(ctx, obj, KLPT_CB_PRE_UNPATCH); }
int on_core_post_unpatch(struct pt_regs *ctx, void *obj) { return core_event(ctx, obj, KLPT_CB_POST_UNPATCH); }

/* direct: a kprobe on the livepatch module's callback function; its first
 * argument is the struct klp_object it runs for. on_direct_pre is the entry
 * program of a function whose return is probed too (on_direct_ret). */
int on_direct(struct pt_regs *ctx)
{
	hit(KLPT_HIT_DIRECT);
	u64 o = (u64)PT_REGS_PARM1(ctx);
	return jump(ctx, SNAP_OBJ, KLPT_DIRECT, o, 0, PT_REGS_IP(ctx));
}

int on_direct_pre(struct pt_regs *ctx)
{
	hit(KLPT_HIT_DIRECT);
	u32 t = tid();
	u64 o = (u64)PT_REGS_PARM1(ctx);
	u64 ip = PT_REGS_IP(ctx);
	direct_arg.update(&t, &o);
	direct_ip.update(&t, &ip);
	return jump(ctx, SNAP_OBJ, KLPT_DIRECT, o, 0, ip);
}

int on_direct_ret(struct pt_regs *ctx)
{
	hit(KLPT_HIT_DIRECT_RET);
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


/* ---- stalls --------------------------------------------------------------------
 *
 * Which tasks keep a transition open, why, on which function, since when
 * (docs/probes.md "Stalled transitions"). The kernel checks every task that
 * has not switched once per sweep (klp_try_complete_transition: at the
 * enable or disable, then about once a second from a kworker) and, from
 * 6.4, a pending task checks itself at scheduling points. Each failed check
 * is aggregated here, in `stall_tasks`, keyed by task pointer; nothing goes
 * to the ring buffer (a CPU-bound kthread can fail thousands of checks a
 * second). The daemon reads the tables after each sweep while a transition
 * is open (tracer/observe/stalls.py). Every function probed here runs only while a
 * transition is open: an idle host costs nothing.
 *
 * Generations: entries and sweep counters belong to one transition
 * direction, numbered by the hits of klp_init_transition plus
 * klp_reverse_transition (the `hits` counters the probes above keep), so a
 * new transition or a reverse starts afresh without a probe of its own.
 */

BPF_HASH(stall_tasks, u64, struct klpt_blocker, KLPT_STALL_SLOTS);
BPF_ARRAY(stall_sweep, struct klpt_sweeps, 1);
/* A check's arguments, from its entry to its return. Per CPU: the checks run
 * with preemption off (under task_call_func's locks, or the tasklist read
 * lock of the sweep, or the scheduler's self-check), so entry and return
 * are on one CPU with nothing of the kind in between. */
struct stall_arg {
	u64 task;
	u64 arg;
};
BPF_PERCPU_ARRAY(stall_check_arg, struct stall_arg, 1);
BPF_PERCPU_ARRAY(stall_switch_arg, struct stall_arg, 1);

static __always_inline u64 stall_gen(void)
{
	return hits_of(KLPT_HIT_INIT) + hits_of(KLPT_HIT_REVERSE);
}

/* A failed check of `task`: create or update its entry. */
static __always_inline void stall_note(u64 task, int ret, u32 source, u64 arg)
{
	int zero = 0;
	u64 now = bpf_ktime_get_ns(), gen = stall_gen();
	struct klpt_sweeps *s = stall_sweep.lookup(&zero);
	u32 window = s && s->gen == gen ? s->started : 0;
	u32 pid = 0;

	bpf_probe_read_kernel(&pid, sizeof(pid), (void *)(task + KLPT_OFF_TASK_PID));
	struct klpt_blocker *b = stall_tasks.lookup(&task);
	if (b && (b->gen != gen || b->pid != pid)) {
		/* an earlier transition's, or a freed task_struct reused by a new task */
		stall_tasks.delete(&task);
		b = NULL;
	}
	if (!b) {
		struct klpt_blocker z = {};
		z.first_ns = now;
		z.gen = gen;
		z.pid = pid;
		z.first_window = window;
		bpf_probe_read_kernel(&z.tgid, sizeof(z.tgid), (void *)(task + KLPT_OFF_TASK_TGID));
		bpf_probe_read_kernel(&z.flags, sizeof(z.flags), (void *)(task + KLPT_OFF_TASK_FLAGS));
		bpf_probe_read_kernel_str(z.comm, KLPT_COMM_LEN, (void *)(task + KLPT_OFF_TASK_COMM));
		if (stall_tasks.insert(&task, &z)) {
			if (s)
				lock_xadd(&s->overflow, 1);     /* the table is full: counted */
			return;
		}
		b = stall_tasks.lookup(&task);
		if (!b)
			return;
	}
	b->last_ns = now;
	b->last_window = window;
	b->ret = ret;
	b->source = source;
	lock_xadd(&b->checks, 1);
	b->func[0] = 0;
	if (ret == -KLPT_EADDRINUSE && arg) {
		/* arg is klp_try_switch_task's &old_name, still live: its frame
		 * is below ours */
		u64 name = rd_ptr(arg, 0);
		if (name)
			bpf_probe_read_kernel_str(b->func, KLPT_FUNC_LEN, (void *)name);
	}
}

/* klp_check_and_switch_task(task, arg): 0 switched, -EBUSY on a CPU,
 * -EINVAL unreliable stack, -EADDRINUSE a patched function on the stack
 * (5.16 to 7.3; out of line: task_call_func() takes its address). */
int on_stall_check(struct pt_regs *ctx, void *task, void *arg)
{
	hit(KLPT_HIT_STALL_CHECK);
	int zero = 0;
	struct stall_arg *a = stall_check_arg.lookup(&zero);
	if (a) {
		a->task = (u64)task;
		a->arg = (u64)arg;
	}
	return 0;
}

int on_stall_check_ret(struct pt_regs *ctx)
{
	hit(KLPT_HIT_STALL_CHECK_RET);
	int zero = 0;
	struct stall_arg *a = stall_check_arg.lookup(&zero);
	if (!a || !a->task)
		return 0;               /* its entry was not seen */
	u64 task = a->task, arg = a->arg;
	int ret = (int)PT_REGS_RC(ctx);
	a->task = 0;
	if (ret == 0)
		stall_tasks.delete(&task);      /* switched */
	else
		stall_note(task, ret, KLPT_STALL_FROM_CHECK, arg);
	return 0;
}

/* Fallback where klp_check_and_switch_task does not exist (before 5.16):
 * klp_try_switch_task(task) returns whether the task has switched, no reason. */
int on_stall_switch(struct pt_regs *ctx, void *task)
{
	hit(KLPT_HIT_STALL_SWITCH);
	int zero = 0;
	struct stall_arg *a = stall_switch_arg.lookup(&zero);
	if (a)
		a->task = (u64)task;
	return 0;
}

int on_stall_switch_ret(struct pt_regs *ctx)
{
	hit(KLPT_HIT_STALL_SWITCH_RET);
	int zero = 0;
	struct stall_arg *a = stall_switch_arg.lookup(&zero);
	if (!a || !a->task)
		return 0;
	u64 task = a->task;
	a->task = 0;
	if (PT_REGS_RC(ctx) & 0xff)
		stall_tasks.delete(&task);
	else
		stall_note(task, 0, KLPT_STALL_FROM_SWITCH, 0);
	return 0;
}

/* klp_try_complete_transition(): one sweep over every task. It completed the
 * transition iff klp_complete_transition ran inside it (its hit counter
 * moved); otherwise it left tasks behind and counts towards the signals. */
int on_stall_sweep(struct pt_regs *ctx)
{
	hit(KLPT_HIT_STALL_SWEEP);
	int zero = 0;
	struct klpt_sweeps *s = stall_sweep.lookup(&zero);
	if (!s)
		return 0;
	u64 gen = stall_gen(), now = bpf_ktime_get_ns();
	if (s->gen != gen) {
		s->gen = gen;
		s->gen_ns = now;
		s->done_start_ns = 0;
		s->done_end_ns = 0;
		s->signal_ns = 0;
		s->started = 0;
		s->incomplete = 0;
		s->signals = 0;
	}
	s->complete_mark = hits_of(KLPT_HIT_COMPLETE);
	s->start_ns = now;
	s->started++;
	return 0;
}

int on_stall_sweep_ret(struct pt_regs *ctx)
{
	hit(KLPT_HIT_STALL_SWEEP_RET);
	int zero = 0;
	struct klpt_sweeps *s = stall_sweep.lookup(&zero);
	if (!s || !s->start_ns)
		return 0;               /* its entry was not seen */
	u64 now = bpf_ktime_get_ns();
	if (hits_of(KLPT_HIT_COMPLETE) == s->complete_mark) {
		/* transition.c: if (klp_signals_cnt && !(klp_signals_cnt %
		 * SIGNALS_TIMEOUT)) klp_send_signals(); klp_signals_cnt++; */
		if (s->incomplete && s->incomplete % KLPT_SIGNALS_TIMEOUT == 0) {
			s->signals++;
			s->signal_ns = now;
		}
		s->incomplete++;
	}
	s->done_start_ns = s->start_ns;
	s->done_end_ns = now;
	s->start_ns = 0;
	return 0;
}
