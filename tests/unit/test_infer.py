"""tracer/observe/infer.py: raw probe snapshots -> callback records, on sequences shaped
like the kernel's call order (kernel/livepatch/core.c, transition.c). The raw
events are what the BPF programs would report; nothing here claims a kernel ran."""

from __future__ import annotations

import re
from pathlib import Path

from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.observe.infer import Inference

A = (0x1000, 0x2000, 0x3000, 0x4000)     # callback addresses of both objects


def obj(name, *, loaded=True, patched=False, pue=False, cb=A):
    return rw.Obj(name, cb, loaded=loaded, patched=patched, post_unpatch_enabled=pue)


def raw(kind, *objs, patch="lp", module="", arg=0, ip=0, ctx=rw.CTX_NONE, pid=0, ts=[0]):
    ts[0] += 1
    return rw.Raw(kind, ts[0], patch=patch, module=module, arg=arg, ip=ip, ctx=ctx, pid=pid,
                  objs=list(objs))


def run(events, **kw):
    out = []
    inf = Inference(out.append, **kw)
    for e in events:
        inf.feed(e)
    inf.flush()
    assert [r["seq"] for r in out] == list(range(1, len(out) + 1))
    return out


def cbs(out):
    return [(r["object"], r["callback"], r.get("ret"), r["evidence"])
            for r in out if r["type"] == "callback"]


def enable_ok():
    return [
        raw(rw.INIT_TRANSITION, obj("vmlinux"), obj("m"), arg=1),
        raw(rw.PATCH_OBJECT, obj("vmlinux", pue=True)),
        raw(rw.PATCH_OBJECT, obj("m", pue=True)),
        raw(rw.START_TRANSITION, obj("vmlinux", patched=True, pue=True), obj("m", patched=True, pue=True)),
        raw(rw.COMPLETE, obj("vmlinux", patched=True, pue=True), obj("m", patched=True, pue=True)),
        raw(rw.ENABLE_RET, arg=0),
    ]


def test_enable_then_disable():
    out = run(enable_ok() + [
        raw(rw.INIT_TRANSITION, obj("vmlinux", patched=True, pue=True), obj("m", patched=True, pue=True), arg=0),
        raw(rw.START_TRANSITION, obj("vmlinux", patched=True, pue=True), obj("m", patched=True, pue=True)),
        raw(rw.COMPLETE, obj("vmlinux", pue=True), obj("m", pue=True)),
    ])
    assert cbs(out) == [("vmlinux", "pre_patch", 0, "inferred"), ("m", "pre_patch", 0, "inferred"),
                        ("vmlinux", "post_patch", None, "inferred"), ("m", "post_patch", None, "inferred"),
                        ("vmlinux", "pre_unpatch", None, "inferred"), ("m", "pre_unpatch", None, "inferred"),
                        ("vmlinux", "post_unpatch", None, "inferred"), ("m", "post_unpatch", None, "inferred")]
    assert [(r["event"], r["target"]) for r in out if r["type"] == "transition"] == [
        ("init", "patched"), ("start", "patched"), ("complete", "patched"),
        ("init", "unpatched"), ("start", "unpatched"), ("complete", "unpatched")]


def test_enable_failing_pre_patch_waits_for_the_return_code():
    out = run([
        raw(rw.INIT_TRANSITION, obj("vmlinux"), obj("m"), arg=1),
        raw(rw.PATCH_OBJECT, obj("vmlinux", pue=True)),
        raw(rw.CANCEL, obj("vmlinux", patched=True, pue=True), obj("m")),
        raw(rw.COMPLETE, obj("vmlinux", pue=True), obj("m")),
        raw(rw.ENABLE_RET, arg=-19),
    ])
    assert cbs(out) == [("vmlinux", "pre_patch", 0, "inferred"), ("m", "pre_patch", -19, "inferred"),
                        ("vmlinux", "post_unpatch", None, "inferred")]
    kinds = [(r["type"], r.get("event")) for r in out]
    assert kinds.index(("callback", None)) < kinds.index(("transition", "cancel"))
    assert kinds[-1] == ("patch", "enable_failed")


def test_module_coming_refused():
    out = run(enable_ok() + [
        raw(rw.MODULE_COMING, module="m2", ctx=rw.CTX_COMING),
        raw(rw.MODULE_COMING_RET, module="m2", arg=-19),
    ])
    assert ("m2", "pre_patch", -19, "inferred") not in cbs(out)   # lp has no object m2
    out = run(enable_ok()[:1] + [raw(rw.PATCH_OBJECT, obj("vmlinux", pue=True)),
                                 raw(rw.START_TRANSITION, obj("vmlinux", patched=True, pue=True), obj("m", loaded=False)),
                                 raw(rw.COMPLETE, obj("vmlinux", patched=True, pue=True), obj("m", loaded=False)),
                                 raw(rw.MODULE_COMING, module="m", ctx=rw.CTX_COMING),
                                 raw(rw.MODULE_COMING_RET, module="m", arg=-19)])
    assert cbs(out)[-1] == ("m", "pre_patch", -19, "inferred")
    assert (out[-1]["type"], out[-1]["event"]) == ("module", "refused")


def test_module_going_and_coming():
    out = run(enable_ok() + [
        raw(rw.MODULE_GOING, module="m", ctx=rw.CTX_GOING),
        raw(rw.UNPATCH_OBJECT, obj("m", patched=True, pue=True), ctx=rw.CTX_GOING),
        raw(rw.MODULE_COMING, module="m", ctx=rw.CTX_COMING),
        raw(rw.PATCH_OBJECT, obj("m", pue=True), ctx=rw.CTX_COMING),
        raw(rw.PATCH_OBJECT_RET, obj("m", patched=True, pue=True), ctx=rw.CTX_COMING, arg=0),
        raw(rw.MODULE_COMING_RET, module="m", arg=0),
    ])
    assert cbs(out)[-4:] == [("m", "pre_unpatch", None, "inferred"), ("m", "post_unpatch", None, "inferred"),
                             ("m", "pre_patch", 0, "inferred"), ("m", "post_patch", None, "inferred")]


class Covered:
    """Coverage as tracer/observe/directprobes.py reports it: these (patch, obj, cb)
    had a live direct probe since `since`."""

    def __init__(self, keys=(), since=0):
        self.keys, self.since = set(keys), since
        self.enabled, self.gone = [], []

    def covers(self, patch, o, cb, addr, since_ns):
        return (patch, o, cb) in self.keys and self.since <= since_ns

    def on_enable(self, patch, objs, ts):
        self.enabled.append(patch)

    def on_module_going(self, module, ts):
        self.gone.append(module)


def test_direct_wins_is_not_doubled_and_the_order_is_the_kernels():
    """Mixed evidence: the inferred post_patch of m is predicted at the
    completion snapshot, the direct one of vmlinux fills its slot; the trace
    keeps the kernel's object order (vmlinux before m)."""
    pre = raw(rw.DIRECT_RET, obj("vmlinux"), arg=0, ip=A[0] + 1)
    post = raw(rw.DIRECT, obj("vmlinux"), ip=A[1] + 4)
    ev = enable_ok()
    out = run([ev[0], pre, ev[1], ev[2], ev[3], ev[4], post, ev[5]],
              coverage=Covered({("lp", "vmlinux", 1)}))
    assert cbs(out) == [("vmlinux", "pre_patch", 0, "direct"), ("m", "pre_patch", 0, "inferred"),
                        ("vmlinux", "post_patch", None, "direct"), ("m", "post_patch", None, "inferred")]


def test_a_live_direct_probe_that_stays_silent_means_the_callback_did_not_run():
    """With a live probe on m's post_patch that did not fire, the trace shows
    no post_patch of m (the engine then says it is missing); without
    coverage the kernel's code predicts it: inferred."""
    ev = enable_ok()
    silent = run(ev, coverage=Covered({("lp", "m", 1)}))
    assert [c[:2] for c in cbs(silent)].count(("m", "post_patch")) == 0
    assert ("m", "post_patch", None, "inferred") in cbs(run(ev))
    # a probe attached after the step opened proves nothing: inferred
    late = run(ev, coverage=Covered({("lp", "m", 1)}, since=10**12))
    assert ("m", "post_patch", None, "inferred") in cbs(late)


def test_reverse_runs_no_pre_unpatch():
    ev = enable_ok()
    out = run(ev[:4] + [
        raw(rw.REVERSE, obj("vmlinux", patched=True, pue=True)),
        raw(rw.START_TRANSITION, obj("vmlinux", patched=True, pue=True), obj("m", patched=True, pue=True)),
        raw(rw.COMPLETE, obj("vmlinux", pue=True), obj("m", pue=True)),
    ])
    assert [c[1] for c in cbs(out)] == ["pre_patch", "pre_patch", "post_unpatch", "post_unpatch"]


def _header_constants() -> dict[str, int]:
    """Every `#define KLPT_X n` and enum member `KLPT_X = n` (or implicit) of bpf/klptrace.h."""
    h = (Path(__file__).resolve().parents[2] / "bpf" / "klptrace.h").read_text()
    out = {m[0]: int(m[1]) for m in re.findall(r"#define (KLPT_\w+)\s+(\d+)", h)}
    for body in re.findall(r"enum \w+ \{(.*?)\};", h, re.S):
        n = -1
        for item in re.sub(r"/\*.*?\*/", "", body, flags=re.S).split(","):
            item = item.strip()
            if not item:
                continue
            name, _, val = item.partition("=")
            n = int(val) if val.strip() else n + 1
            out[name.strip()] = n
    return out


def test_ctypes_layout_matches_header():
    c = _header_constants()
    assert c["KLPT_NAME_LEN"] == rw.NAME_LEN and c["KLPT_CHUNK_OBJS"] == rw.CHUNK_OBJS
    assert c["KLPT_MAX_CHUNKS"] == rw.MAX_CHUNKS and c["KLPT_HIT_SLOTS"] == rw.HIT_SLOTS
    kinds = {k: v for k, v in vars(rw).items() if isinstance(v, int) and f"KLPT_{k}" in c
             and k.isupper() and not k.startswith(("CTX_", "SNAP_", "KLP_"))}
    assert kinds and all(c[f"KLPT_{k}"] == v for k, v in kinds.items()), kinds
    for name, v in (("CTX_NONE", rw.CTX_NONE), ("CTX_COMING", rw.CTX_COMING),
                    ("CTX_GOING", rw.CTX_GOING), ("SNAP_MORE", rw.SNAP_MORE),
                    ("SNAP_TRUNCATED", rw.SNAP_TRUNCATED)):
        assert c[f"KLPT_{name}"] == v
    hits = [k for k in c if k.startswith("KLPT_HIT_") and k != "KLPT_HIT_SLOTS"]
    assert [h[len("KLPT_HIT_"):].lower() for h in sorted(hits, key=c.get)] == list(rw.HIT_PROGRAMS)
    import ctypes
    assert ctypes.sizeof(rw.CObj) == 56 + 32 + 8
    assert ctypes.sizeof(rw.CEvent) == 8 * 4 + 4 * 8 + 56 * 2 + 8 * ctypes.sizeof(rw.CObj)


def _header_struct_fields(name: str) -> list[tuple[str, int]]:
    """(member, size in bytes) of `struct NAME` in bpf/klptrace.h, in order."""
    h = (Path(__file__).resolve().parents[2] / "bpf" / "klptrace.h").read_text()
    consts = _header_constants()
    body = re.search(r"struct %s \{(.*?)\};" % name, h, re.S).group(1)
    sizes = {"unsigned long long": 8, "long long": 8, "unsigned int": 4, "int": 4, "char": 1}
    out = []
    for decl in re.sub(r"/\*.*?\*/", "", body, flags=re.S).split(";"):
        decl = decl.strip()
        if not decl:
            continue
        m = re.match(r"(unsigned long long|long long|unsigned int|int|char) (\w+)(?:\[(\w+)\])?$", decl)
        assert m, decl
        n = 1 if m[3] is None else int(consts.get(m[3], m[3]))
        out.append((m[2], sizes[m[1]] * n))
    return out


def test_stall_tables_match_header():
    """The daemon reads the stall tables with these mirrors (tracer/observe/stalls.py):
    same members, same order, same sizes as the C structs."""
    import ctypes
    for cname, cls in (("klpt_blocker", rw.CBlocker), ("klpt_sweeps", rw.CSweeps)):
        want = _header_struct_fields(cname)
        got = [(f, ctypes.sizeof(t)) for f, t in cls._fields_]
        assert got == want, cname
    assert ctypes.sizeof(rw.CBlocker) == 4 * 8 + 8 * 4 + 16 + 128
    b = rw.CBlocker(pid=7, tgid=5, flags=rw.PF_KTHREAD, ret=-rw.EADDRINUSE, comm=b"kworker/0:1",
                    func=b"klpt_busy_work_func", first_ns=1, last_ns=2, checks=3)
    d = rw.decode_blocker(0xffff0000, bytes(b))
    assert (d.pid, d.tgid, d.kthread, d.comm, d.function, d.checks) == \
        (7, 5, True, "kworker/0:1", "klpt_busy_work_func", 3)


def test_loss_goes_out_after_what_was_held():
    """A record held for a return value that may be among the lost events goes
    out as it is, before the `loss` record: the trace keeps the kernel's order."""
    out = []
    inf = Inference(out.append)
    inf.feed(raw(rw.MODULE_COMING, module="m"))
    # held until klp_module_coming returns (a failing pre_patch is known only then)
    inf.feed(raw(rw.PATCH_OBJECT, obj("m", pue=True), ctx=rw.CTX_COMING))
    # the inferred pre_patch is known at once; the module record stands where
    # the section began (its thread ran again)
    assert [r["type"] for r in out] == ["module", "callback"]
    inf.loss(5, 3)
    assert [r["type"] for r in out] == ["module", "callback", "loss"]
    assert out[2]["count"] == 3 and not inf.comings


def test_loss_goes_before_the_first_event_after_the_gap():
    out = []
    inf = Inference(out.append)
    inf.feed(rw.Raw(rw.MODULE_GOING, 10, module="m", pid=1))
    inf.feed(rw.Raw(rw.MODULE_GOING_RET, 15, module="m", pid=1))
    inf.feed(rw.Raw(rw.MODULE_GOING, 20, module="n", pid=1, lost=4))
    inf.feed(rw.Raw(rw.MODULE_GOING_RET, 25, module="n", pid=1, lost=4))
    inf.check_lost(4, 30)           # nothing new at the poll
    inf.check_lost(6, 40)           # lost after the last event
    assert [(r["type"], r.get("module"), r.get("count")) for r in out] == [
        ("module", "m", None), ("loss", None, 4), ("module", "n", None), ("loss", None, 2)]


# --- klp_module_coming/going race an enable: their entry probes fire before
# mutex_lock(&klp_mutex) (kernel/livepatch/core.c), so the module record
# stands where the evidence puts the section. Thread 1: insmod of the
# livepatch (its enable); thread 2: insmod/rmmod of the target module m.

def _order(out):
    return [(r["type"], r.get("event") or r.get("callback"), r.get("object") or r.get("module"))
            for r in out if r["type"] != "patch"]


def coming_after_enable():
    return [
        raw(rw.MODULE_COMING, module="m", pid=2),
        raw(rw.INIT_TRANSITION, obj("vmlinux"), obj("m", loaded=False), arg=1, pid=1),
        raw(rw.PATCH_OBJECT, obj("vmlinux", pue=True), pid=1),
        raw(rw.START_TRANSITION, obj("vmlinux", patched=True, pue=True), obj("m", loaded=False),
            pid=1),
        raw(rw.ENABLE_RET, arg=0, pid=1),
        raw(rw.PATCH_OBJECT, obj("m", pue=True), ctx=rw.CTX_COMING, pid=2),
        raw(rw.PATCH_OBJECT_RET, obj("m", pue=True, patched=True), ctx=rw.CTX_COMING, pid=2),
        raw(rw.MODULE_COMING_RET, module="m", pid=2),
    ]


def test_module_coming_after_an_enable_that_took_the_mutex_first():
    """m's klp_module_coming entry fired, then lp's whole enable ran (m not yet
    klp_alive: not loaded in its snapshots), then m's section patched m."""
    assert _order(run(coming_after_enable())) == [
        ("transition", "init", None), ("callback", "pre_patch", "vmlinux"),
        ("transition", "start", None),
        ("module", "coming", "m"), ("callback", "pre_patch", "m"), ("module", "live", "m")]


def test_module_coming_before_an_enable_that_sees_the_module():
    """m's section ran first (no patch had an object for m), its return came
    late: lp's enable already saw m loaded, so m came before it."""
    out = run([
        raw(rw.MODULE_COMING, module="m", pid=2),
        raw(rw.INIT_TRANSITION, obj("vmlinux"), obj("m"), arg=1, pid=1),
        raw(rw.PATCH_OBJECT, obj("vmlinux", pue=True), pid=1),
        raw(rw.MODULE_COMING_RET, module="m", pid=2),
        raw(rw.PATCH_OBJECT, obj("m", pue=True), pid=1),
        raw(rw.START_TRANSITION, obj("vmlinux", patched=True, pue=True),
            obj("m", patched=True, pue=True), pid=1),
        raw(rw.ENABLE_RET, arg=0, pid=1),
    ])
    assert _order(out)[:3] == [("module", "coming", "m"), ("transition", "init", None),
                               ("callback", "pre_patch", "vmlinux")]


def going_after_enable():
    return [
        raw(rw.MODULE_GOING, module="m", pid=2),
        raw(rw.INIT_TRANSITION, obj("vmlinux"), obj("m"), arg=1, pid=1),
        raw(rw.PATCH_OBJECT, obj("vmlinux", pue=True), pid=1),
        raw(rw.PATCH_OBJECT, obj("m", pue=True), pid=1),
        raw(rw.START_TRANSITION, obj("vmlinux", patched=True, pue=True),
            obj("m", patched=True, pue=True), pid=1),
        raw(rw.ENABLE_RET, arg=0, pid=1),
        raw(rw.UNPATCH_OBJECT, obj("m", patched=True, pue=True), ctx=rw.CTX_GOING, pid=2),
        raw(rw.MODULE_GOING_RET, module="m", pid=2),
    ]


def test_module_going_after_an_enable_that_patched_the_going_module():
    """m's klp_module_going entry fired, lp's enable still patched m (klp_alive
    still set, so loaded in its snapshot), then m's section cleaned it up."""
    assert _order(run(going_after_enable())) == [
        ("transition", "init", None), ("callback", "pre_patch", "vmlinux"),
        ("callback", "pre_patch", "m"), ("transition", "start", None),
        ("module", "going", "m"), ("callback", "post_unpatch", "m")]


def test_module_going_placed_by_its_return_or_a_snapshot():
    # nothing patched m: its return places it
    out = run([raw(rw.MODULE_GOING, module="m", pid=2),
               raw(rw.MODULE_GOING_RET, module="m", pid=2)])
    assert _order(out) == [("module", "going", "m")]
    # another thread's snapshot shows m gone (klp_alive cleared): m went first
    out = run([raw(rw.MODULE_GOING, module="m", pid=2),
               raw(rw.INIT_TRANSITION, obj("vmlinux"), obj("m", loaded=False), arg=1, pid=1),
               raw(rw.MODULE_GOING_RET, module="m", pid=2)])
    assert _order(out)[:2] == [("module", "going", "m"), ("transition", "init", None)]


def test_the_engine_finds_no_violation_in_either_race():
    """The stress suite's concurrent storm found these as false violations
    (KLP-RUN-001, KLP-ORD-001, KLP-SYM-001) while the module record stood at
    the entry probe; placed at the section, the engine judges them clean."""
    from klptrace.tracer.model import events as ev
    from klptrace.tracer.judge.engine import VIOLATION, Engine
    for events, loaded in ((coming_after_enable(), []), (going_after_enable(), ["m"])):
        eng = Engine(ev.header("k", state={"patches": [], "modules": loaded}))
        found = [f for r in run(events) for f in eng.feed(r)] + eng.finish()
        assert [f for f in found if f.kind == VIOLATION] == []


def test_a_pending_module_record_goes_out_at_exit_with_its_entry_time():
    e = raw(rw.MODULE_GOING, module="m", pid=2)
    out = run([e])             # run() flushes as the daemon does at exit
    assert [(r["type"], r["event"], r["ts_ns"]) for r in out] == [("module", "going", e.ts_ns)]


def test_one_function_serving_two_callbacks_is_told_apart_by_the_step():
    """A livepatch may register one function as both pre_unpatch and
    post_unpatch of an object: each run is the callback its step waits for."""
    both = 0x5000
    cb = (A[0], A[1], both, both)
    o = lambda **kw: obj("vmlinux", cb=cb, **kw)   # noqa: E731
    ev = [raw(rw.INIT_TRANSITION, o(), arg=1),
          raw(rw.DIRECT_RET, o(), arg=0, ip=A[0]),
          raw(rw.PATCH_OBJECT, o(pue=True)),
          raw(rw.START_TRANSITION, o(patched=True, pue=True)),
          raw(rw.COMPLETE, o(patched=True, pue=True)),
          raw(rw.DIRECT, o(patched=True, pue=True), ip=A[1]),
          raw(rw.COMPLETE_RET),
          raw(rw.INIT_TRANSITION, o(patched=True, pue=True), arg=0),
          raw(rw.DIRECT, o(patched=True, pue=True), ip=both),
          raw(rw.START_TRANSITION, o(patched=True, pue=True)),
          raw(rw.COMPLETE, o(pue=True)),
          raw(rw.DIRECT, o(pue=True), ip=both),
          raw(rw.COMPLETE_RET)]
    assert [(c[1], c[3]) for c in cbs(run(ev))] == [
        ("pre_patch", "direct"), ("post_patch", "direct"),
        ("pre_unpatch", "direct"), ("post_unpatch", "direct")]
