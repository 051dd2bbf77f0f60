"""tracer/daemon/runloop.py: what ends the daemon's wait (a real epoll, a real signal),
and how long it may sleep when nothing does."""

import os
import signal
import time

from klptrace.exporters.collectors import WAKE_REASONS
from klptrace.tracer.daemon import runloop
from klptrace.tracer.daemon.runloop import Wake


def test_an_idle_daemon_sleeps_long_and_a_busy_one_ticks():
    assert runloop.wait_s(holding=False, transition_open=False) == runloop.IDLE_S
    assert runloop.wait_s(holding=True, transition_open=False) == runloop.BUSY_S
    assert runloop.wait_s(holding=False, transition_open=True) == runloop.BUSY_S
    assert runloop.IDLE_S >= 10 * runloop.BUSY_S


def test_the_metric_labels_are_the_reasons():
    assert WAKE_REASONS == tuple(w.value for w in Wake)


def test_each_source_ends_the_wait_and_is_counted():
    ring_r, ring_w = os.pipe()          # stand-ins: any pollable fd
    watch_r, watch_w = os.pipe()
    got = []
    old = signal.signal(signal.SIGHUP, lambda *_: got.append("hup"))
    w = runloop.Waiter(ring_r, watch_r)
    try:
        t = time.monotonic()
        assert w.wait(0.05) == {Wake.TIMER}
        assert time.monotonic() - t >= 0.04
        os.write(ring_w, b"x")
        assert w.wait(5) == {Wake.RING}     # level-triggered: the reader empties it
        os.read(ring_r, 1)
        os.write(watch_w, b"x")
        assert w.wait(5) == {Wake.DISCOVERY}
        os.read(watch_r, 1)
        # a signal ends even an endless wait (Python would retry the poll)
        t = time.monotonic()
        os.kill(os.getpid(), signal.SIGHUP)
        assert w.wait(30) == {Wake.SIGNAL}
        assert time.monotonic() - t < 5 and got == ["hup"]
        assert w.wait(0) == {Wake.TIMER}    # the pipe was emptied
        assert w.wakeups == {"ring": 1, "discovery": 1, "signal": 1, "timer": 2}
    finally:
        w.close()
        signal.signal(signal.SIGHUP, old)
        for fd in (ring_r, ring_w, watch_r, watch_w):
            os.close(fd)
