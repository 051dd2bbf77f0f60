"""Reassembles patch snapshots that the BPF side split over several events.

A snapshot of a struct klp_patch (at klp_init_transition, klp_start_transition,
klp_complete_transition, ...) carries KLPT_CHUNK_OBJS objects per ring-buffer
event; a patch with more objects continues in the next events of the same
thread (bpf/klptrace.bpf.c do_snap_patch tail-calls itself), up to
KLPT_MAX_CHUNKS events. Events of one thread keep their order in the ring
buffer and nothing else of that thread can run between the events of one
chain (they are written by one chain of tail calls), so a chain is complete
when its event with ``snap == SNAP_LAST`` (or ``SNAP_TRUNCATED``) arrives.

What comes out is one Raw per snapshot with all its objects and two flags:

* ``truncated``: the patch has more objects than the bound (256); the objects
  beyond it are unknown.
* ``incomplete``: a chain broke off (a ring-buffer reservation or a tail call
  failed): the objects after the last event are unknown.

Either is a gap that the inference turns into a ``loss`` record; nothing is
silently cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from klptrace.tracer.observe import rawevents as rw


@dataclass
class Snapshot:
    """A reassembled event: the first event of the chain with every object."""
    raw: rw.Raw
    truncated: bool = False
    incomplete: bool = False


@dataclass
class _Chain:
    first: rw.Raw
    objs: list = field(default_factory=list)
    next_chunk: int = 1


class Assembler:
    def __init__(self) -> None:
        self._open: dict[int, _Chain] = {}      # tid -> chain waiting for its next event

    def feed(self, r: rw.Raw) -> Iterator[Snapshot]:
        chain = self._open.get(r.pid)
        if chain is not None:
            if r.kind == chain.first.kind and r.chunk == chain.next_chunk:
                chain.objs.extend(r.objs)
                chain.next_chunk += 1
                if r.snap == rw.SNAP_MORE:
                    return
                del self._open[r.pid]
                yield self._done(chain, truncated=r.snap == rw.SNAP_TRUNCATED)
                return
            # the chain broke off: what it has goes out, marked
            del self._open[r.pid]
            yield self._done(chain, incomplete=True)
        if r.chunk != 0:
            # a continuation without its start (the start was lost): a gap
            yield Snapshot(r, incomplete=True)
            return
        if r.snap == rw.SNAP_MORE:
            self._open[r.pid] = _Chain(r, list(r.objs))
            return
        yield Snapshot(r, truncated=r.snap == rw.SNAP_TRUNCATED)

    def flush(self) -> Iterator[Snapshot]:
        """At exit or before a loss: open chains go out as they are."""
        for tid in list(self._open):
            yield self._done(self._open.pop(tid), incomplete=True)

    @staticmethod
    def _done(chain: _Chain, *, truncated: bool = False, incomplete: bool = False) -> Snapshot:
        chain.first.objs = chain.objs
        return Snapshot(chain.first, truncated=truncated, incomplete=incomplete)
