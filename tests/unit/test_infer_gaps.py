"""tracer/observe/infer.py, issue 12: no silent cap, no freeze, an explicit gap.

Raw events here are shaped like the BPF programs' (bpf/klptrace.bpf.c) in the
kernel's call order (kernel/livepatch/core.c, transition.c); nothing here
claims a kernel ran. Each test names what the daemon got wrong before."""

from __future__ import annotations

from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.observe.holds import HOLD_NS
from klptrace.tracer.observe.infer import Inference

A = (0x1000, 0x2000, 0x3000, 0x4000)


def obj(name, *, loaded=True, patched=False, pue=False):
    return rw.Obj(name, A, loaded=loaded, patched=patched, post_unpatch_enabled=pue)


class Raws:
    def __init__(self):
        self.ts = 0

    def __call__(self, kind, *objs, patch="lp", module="", arg=0, ip=0, ctx=rw.CTX_NONE,
                 pid=1, chunk=0, snap=rw.SNAP_LAST):
        self.ts += 1000
        return rw.Raw(kind, self.ts, patch=patch, module=module, arg=arg, ip=ip, ctx=ctx,
                      pid=pid, objs=list(objs), chunk=chunk, snap=snap)


def feed(events, inf=None, out=None, **kw):
    out = out if out is not None else []
    inf = inf or Inference(out.append, **kw)
    for e in events:
        inf.feed(e)
    return inf, out


def kinds(out):
    return [(r["type"], r.get("event") or r.get("callback"), r.get("object") or r.get("module"))
            for r in out]


def losses(out):
    return [r.get("reason") for r in out if r["type"] == "loss"]


# --- objects beyond one snapshot event ---------------------------------------------

def names(n):
    return ["vmlinux"] + [f"t{i:02d}" for i in range(1, n)]


def chain(raw, kind, objs, *, patch="lp", arg=0, truncated=False, pid=1):
    """One snapshot as the BPF side writes it: 8 objects per event."""
    chunks = [objs[i:i + rw.CHUNK_OBJS] for i in range(0, len(objs), rw.CHUNK_OBJS)] or [[]]
    out = []
    for i, c in enumerate(chunks):
        last = i == len(chunks) - 1
        snap = (rw.SNAP_TRUNCATED if truncated else rw.SNAP_LAST) if last else rw.SNAP_MORE
        out.append(raw(kind, *c, patch=patch, arg=arg, chunk=i, snap=snap, pid=pid))
    return out


def test_a_patch_with_twelve_objects_is_traced_whole():
    """Before: KLPT_MAX_OBJS cut the snapshot at 8 objects, silently: the
    enable record listed 8 and objects 9-12 never got a callback record."""
    raw = Raws()
    objs = [obj(n) for n in names(12)]
    pue = [obj(n, pue=True, patched=True) for n in names(12)]
    events = (chain(raw, rw.INIT_TRANSITION, objs, arg=rw.KLP_PATCHED)
              + [raw(rw.PATCH_OBJECT, obj(n, pue=True)) for n in names(12)]
              + chain(raw, rw.START_TRANSITION, pue)
              + chain(raw, rw.COMPLETE, pue) + [raw(rw.COMPLETE_RET), raw(rw.ENABLE_RET)])
    _, out = feed(events)
    enable = next(r for r in out if r["type"] == "patch" and r["event"] == "enable")
    assert [o["name"] for o in enable["objects"]] == names(12)
    cbs = [(r["object"], r["callback"]) for r in out if r["type"] == "callback"]
    assert cbs == [(n, "pre_patch") for n in names(12)] + [(n, "post_patch") for n in names(12)]
    assert losses(out) == []


def test_a_patch_beyond_the_bound_is_a_gap_not_a_silent_cut():
    raw = Raws()
    objs = [obj(n) for n in names(16)]
    _, out = feed(chain(raw, rw.INIT_TRANSITION, objs, arg=rw.KLP_PATCHED, truncated=True))
    assert any("bound" in r for r in losses(out))


def test_a_snapshot_cut_short_is_a_gap():
    """A reservation failed in the middle of a chain: the next event of that
    thread is not its continuation."""
    raw = Raws()
    first = chain(raw, rw.INIT_TRANSITION, [obj(n) for n in names(12)], arg=rw.KLP_PATCHED)[0]
    _, out = feed([first, raw(rw.PATCH_OBJECT, obj("vmlinux", pue=True))])
    assert any("cut short" in r for r in losses(out))
    assert kinds(out)[0] == ("patch", "enable", None)


# --- holds are bounded -------------------------------------------------------------

def enable_ok(raw, patch="lp", mods=("m",)):
    objs = [obj("vmlinux")] + [obj(m, loaded=False) for m in mods]
    return [raw(rw.INIT_TRANSITION, *objs, patch=patch, arg=rw.KLP_PATCHED),
            raw(rw.PATCH_OBJECT, obj("vmlinux", pue=True), patch=patch),
            raw(rw.START_TRANSITION, obj("vmlinux", patched=True, pue=True), patch=patch),
            raw(rw.COMPLETE, obj("vmlinux", patched=True, pue=True), patch=patch),
            raw(rw.COMPLETE_RET, patch=patch),
            raw(rw.ENABLE_RET, patch=patch)]


def test_a_module_coming_whose_return_never_fires_does_not_freeze_the_trace():
    """Before: one klp_module_coming without its return held every later
    record for good while the daemon reported ready. Now the section's own
    records go out, its missing end is a gap when its deadline passes, and
    later operations are traced."""
    raw = Raws()
    inf, out = feed(enable_ok(raw) + [
        raw(rw.MODULE_COMING, module="m", ctx=rw.CTX_COMING, pid=2),
        raw(rw.PATCH_OBJECT, obj("m", pue=True), ctx=rw.CTX_COMING, pid=2),
        raw(rw.PATCH_OBJECT_RET, obj("m", pue=True, patched=True), ctx=rw.CTX_COMING, pid=2),
        # no MODULE_COMING_RET (a kretprobe miss)
    ])
    assert ("callback", "pre_patch", "m") in kinds(out)
    inf.tick(raw.ts + HOLD_NS + 1)
    assert ("callback", "post_patch", "m") in kinds(out)
    assert any("klp_module_coming" in r for r in losses(out))
    n = len(out)
    feed([raw(rw.INIT_TRANSITION, obj("vmlinux", patched=True, pue=True), arg=rw.KLP_UNPATCHED)],
         inf, out)
    assert len(out) > n          # later records still flow


def test_an_enable_whose_return_never_fires_goes_out_with_its_gap():
    raw = Raws()
    inf, out = feed([
        raw(rw.INIT_TRANSITION, obj("vmlinux"), arg=rw.KLP_PATCHED),
        raw(rw.CANCEL, obj("vmlinux")),
        raw(rw.COMPLETE, obj("vmlinux")),
        raw(rw.COMPLETE_RET),
    ])
    assert ("callback", "pre_patch", "vmlinux") not in kinds(out)   # waits for its code
    inf.tick(raw.ts + HOLD_NS + 1)
    pre = next(r for r in out if r["type"] == "callback")
    assert pre["callback"] == "pre_patch" and "ret" not in pre
    assert any("enable return" in r for r in losses(out))
    assert [r["seq"] for r in out] == list(range(1, len(out) + 1))


def test_the_output_queue_bound_expires_the_oldest_hold():
    raw = Raws()
    out = []
    inf = Inference(out.append, max_queue=5)
    feed([raw(rw.INIT_TRANSITION, obj("vmlinux"), arg=rw.KLP_PATCHED),
          raw(rw.CANCEL, obj("vmlinux"))], inf, out)
    for i in range(8):           # other threads' module loads pile up behind the hold
        feed([raw(rw.MODULE_COMING, module=f"x{i}", pid=10 + i),
              raw(rw.MODULE_COMING_RET, module=f"x{i}", pid=10 + i)], inf, out)
    assert any("enable return" in r for r in losses(out))


# --- a daemon started mid-operation --------------------------------------------------

def test_a_module_load_begun_before_the_probes_is_a_gap():
    """The daemon attached while klp_module_coming of a target module ran:
    its return comes without its entry. What ran in the section is unknown."""
    raw = Raws()
    _, out = feed(enable_ok(raw) + [
        raw(rw.PATCH_OBJECT, obj("m", pue=True), pid=2),        # no ctx: entry unseen
        raw(rw.MODULE_COMING_RET, module="m", pid=2)])
    assert len(losses(out)) == 2 and all("before the probes" in r or "outside any" in r
                                         for r in losses(out))
    assert ("callback", "pre_patch", "m") not in kinds(out)


def test_a_module_no_patch_targets_costs_no_gap():
    raw = Raws()
    _, out = feed([raw(rw.MODULE_COMING_RET, module="x", pid=2),
                   raw(rw.MODULE_GOING_RET, module="x", pid=2)])
    assert losses(out) == []


# --- direct evidence --------------------------------------------------------------------

def test_a_direct_failing_pre_patch_of_a_loading_module_is_not_doubled():
    raw = Raws()
    _, out = feed(enable_ok(raw) + [
        raw(rw.MODULE_COMING, module="m", ctx=rw.CTX_COMING, pid=2),
        raw(rw.DIRECT_RET, obj("m"), arg=-19, ip=A[0] + 1, ctx=rw.CTX_COMING, pid=2),
        raw(rw.MODULE_COMING_RET, module="m", arg=-19, pid=2)])
    pre_m = [r for r in out if r["type"] == "callback" and r["object"] == "m"]
    assert [(r["ret"], r["evidence"]) for r in pre_m] == [(-19, "direct")]
    assert kinds(out)[-1] == ("module", "refused", "m")


def test_a_refused_load_unwinds_after_its_failing_pre_patch_in_kernel_order():
    """klp_module_coming: lp patched m, lp2's pre_patch failed, then
    klp_cleanup_module_patches_limited unwound lp: the inferred failing
    pre_patch (known at the return) stands before that cleanup."""
    raw = Raws()
    _, out = feed(enable_ok(raw) + enable_ok(raw, "lp2") + [
        raw(rw.MODULE_COMING, module="m", ctx=rw.CTX_COMING, pid=2),
        raw(rw.PATCH_OBJECT, obj("m", pue=True), ctx=rw.CTX_COMING, pid=2),
        raw(rw.PATCH_OBJECT_RET, obj("m", pue=True, patched=True), ctx=rw.CTX_COMING, pid=2),
        raw(rw.UNPATCH_OBJECT, obj("m", pue=True, patched=True), ctx=rw.CTX_COMING, pid=2),
        raw(rw.MODULE_COMING_RET, module="m", arg=-19, pid=2)])
    tail = [(r["patch"], r["callback"], r.get("ret")) for r in out
            if r["type"] == "callback" and r["object"] == "m"]
    assert tail == [("lp", "pre_patch", 0), ("lp", "post_patch", None),
                    ("lp2", "pre_patch", -19), ("lp", "pre_unpatch", None),
                    ("lp", "post_unpatch", None)]
    assert kinds(out)[-1] == ("module", "refused", "m")


def test_module_going_tells_coverage_and_accepted_loads_are_live():
    raw = Raws()

    class Cov:
        gone, enabled = [], []

        def covers(self, *a):
            return False

        def on_enable(self, patch, objs, ts):
            self.enabled.append((patch, [o.name for o in objs]))

        def on_module_going(self, module, ts):
            self.gone.append(module)

    cov = Cov()
    _, out = feed(enable_ok(raw) + [
        raw(rw.MODULE_COMING, module="m", ctx=rw.CTX_COMING, pid=2),
        raw(rw.MODULE_COMING_RET, module="m", pid=2),
        raw(rw.MODULE_GOING, module="lp", ctx=rw.CTX_GOING, pid=3),
        raw(rw.MODULE_GOING_RET, module="lp", pid=3)], coverage=cov)
    assert cov.enabled == [("lp", ["vmlinux", "m"])] and cov.gone == ["lp"]
    assert ("module", "live", "m") in kinds(out)
