"""tracer/observe/directprobes.py: which direct probes exist and count as live, with the
tracefs side and the BPF attach replaced by recorders (the real ones run in
the lab, tests/kernel/test_tracer.py). Issue 12: nothing keyed by a kernel
address outlives the module that owned it, probes do not accumulate, and a
preloaded probe counts only where the kernel shows it at the callback."""

from __future__ import annotations

from klptrace.tracer.observe import rawevents as rw
from klptrace.tracer.observe.directprobes import DirectProbes
from klptrace.tracer.observe.modsyms import Callback, Preload

A = (0xffffffffc0001000, 0xffffffffc0001100, 0xffffffffc0001200, 0xffffffffc0001300)


class Events:
    def __init__(self):
        self.defined, self.removed, self.n = {}, [], 0

    def remove_stale(self):
        return 0

    def define(self, ret, location):
        self.n += 1
        name = f"e{self.n}"
        self.defined[name] = ("r" if ret else "p", location)
        return name, None

    def remove(self, name):
        self.removed.append(name)
        del self.defined[name]


class Loader:
    def __init__(self):
        self.fds, self.next = set(), 100

    def attach_tracefs(self, group, event, ret, paired=False):
        self.next += 1
        self.fds.add(self.next)
        return self.next, None

    def detach_fd(self, fd):
        self.fds.discard(fd)


def probes(preload=None, kprobes=frozenset(), clock=lambda: 5):
    ev, ld = Events(), Loader()
    dp = DirectProbes(ld, preload or Preload([]), lambda m: None, events=ev, clock=clock,
                      kprobe_list=lambda: set(kprobes), module_loaded=lambda m: True)
    dp.start()
    return dp, ev, ld


def objs(addrs=A):
    return [rw.Obj("vmlinux", addrs), rw.Obj("klpt_mod", addrs)]


def test_a_patch_gets_probes_by_address_that_go_with_its_module():
    dp, ev, ld = probes()
    dp.on_enable("up1", objs(), 1)
    dp.drain()
    # one event per function (and a return probe for the pre_patch function)
    assert sorted(ev.defined.values()) == sorted(
        [("r", f"{A[0]:#x}"), ("p", f"{A[0]:#x}")] + [("p", f"{a:#x}") for a in A[1:]])
    assert dp.covers("up1", "klpt_mod", 1, A[1], since_ns=10)
    assert not dp.covers("up1", "klpt_mod", 1, A[1], since_ns=1)    # attached after that
    dp.on_module_going("up1", 20)
    assert not dp.covers("up1", "klpt_mod", 1, A[1], since_ns=30)
    dp.drain()
    assert ev.defined == {} and ld.fds == set()
    # version 2 at version 1's addresses: covered as itself, never through up1
    dp.on_enable("up2", objs(), 40)
    dp.drain()
    assert dp.covers("up2", "vmlinux", 0, A[0], since_ns=50)
    assert not dp.covers("up1", "vmlinux", 0, A[0], since_ns=50)
    dp.stop()
    assert ev.defined == {} and ld.fds == set()


def test_reloading_a_patch_does_not_accumulate_events():
    """Before: each load at a new address added another set of events on the
    same MODULE:SYMBOL for the daemon's lifetime (29 after one run)."""
    dp, ev, _ = probes()
    for i in range(10):
        addrs = tuple(a + 0x10000 * i for a in A)
        dp.on_enable("lp", objs(addrs), i)
        dp.on_module_going("lp", i)
    dp.drain()
    assert ev.defined == {}
    dp.stop()


def test_a_module_that_went_before_its_request_was_served_gets_nothing():
    dp, ev, _ = probes()
    dp.on_enable("lp", objs(), 1)
    dp.on_module_going("lp", 2)
    dp.drain()
    assert not dp.covers("lp", "vmlinux", 0, A[0], since_ns=10) and ev.defined == {}
    dp.stop()


def _preload(spec="klpt_pre_patch"):
    p = Preload([])
    p.files["lp"] = "lp.ko"
    p.callbacks = [Callback("lp", "vmlinux", cb, "f", spec=spec) for cb in
                   ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")]
    p.callbacks.append(Callback("lp", "klpt_mod", "post_patch", "g", spec=None))
    return p


def test_preloaded_events_count_where_the_kernel_shows_them_at_the_callback():
    # the kernel lists live kprobes at vmlinux's four callbacks (one at +4:
    # past an endbr64); klpt_mod's post_patch had no unique symbol
    dp, ev, _ = probes(_preload(), kprobes={A[0] + 4, A[1], A[2], A[3]})
    defined_at_start = dict(ev.defined)
    assert all(loc.startswith("lp:") for _k, loc in defined_at_start.values())
    dp.on_enable("lp", objs(), 1)
    dp.drain()
    assert dp.covers("lp", "vmlinux", 0, A[0], since_ns=0)      # since the module loaded
    # klpt_mod's post_patch shares vmlinux's function: the preloaded event covers it
    assert dp.covers("lp", "klpt_mod", 1, A[1], since_ns=0)
    assert set(ev.defined.values()) == set(defined_at_start.values())   # nothing added
    dp.stop()
    assert ev.defined == {}


def test_a_callback_whose_function_no_preloaded_event_covers_is_probed_by_address():
    p = _preload()
    p.callbacks = [c for c in p.callbacks if c.object != "vmlinux" or c.callback != "post_patch"]
    dp, ev, _ = probes(p, kprobes={A[0], A[2], A[3]})
    dp.on_enable("lp", objs(), 1)
    dp.drain()
    assert not dp.covers("lp", "vmlinux", 1, A[1], since_ns=1)
    assert dp.covers("lp", "vmlinux", 1, A[1], since_ns=10)
    assert ("p", f"{A[1]:#x}") in ev.defined.values()
    dp.stop()


def test_a_preloaded_event_the_kernel_does_not_show_is_replaced_by_one_by_address():
    dp, ev, _ = probes(_preload(), kprobes=set())
    dp.on_enable("lp", objs(), 1)
    dp.drain()
    assert not dp.covers("lp", "vmlinux", 1, A[1], since_ns=1)
    assert dp.covers("lp", "vmlinux", 1, A[1], since_ns=10)
    assert ("p", f"{A[1]:#x}") in ev.defined.values()
    dp.stop()


def test_without_the_kprobe_list_a_preloaded_callback_is_neither_live_nor_probed_twice():
    ev, ld = Events(), Loader()

    def no_debugfs():
        raise OSError("no debugfs")

    dp = DirectProbes(ld, _preload(), lambda m: None, events=ev, clock=lambda: 5,
                      kprobe_list=no_debugfs, module_loaded=lambda m: True)
    dp.start()
    before = set(ev.defined.values())
    dp.on_enable("lp", objs(), 1)
    dp.drain()
    assert not dp.covers("lp", "vmlinux", 1, A[1], since_ns=10)
    # klpt_mod's post_patch has no preloaded event of its own, but shares its
    # function with vmlinux's: no second probe on it
    assert set(ev.defined.values()) == before
    dp.stop()
