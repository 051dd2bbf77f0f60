"""The event model: what a klptrace record is (trace format v1).

A trace is JSON Lines: one header, then records. Records stay plain dicts (the
JSON objects themselves) so the validator can stream millions of them without
building an object per line; this module is the one place that says which
types, fields and values exist, builds records for writers (the BPF loader, the
tests) and checks records read back (``check_record``).

docs/trace-format.md documents the same thing for people; tests keep the two
in step.
"""

from __future__ import annotations

FORMAT = "klptrace"
VERSION = 1

# --- enumerations -----------------------------------------------------------

CALLBACKS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
PRE_PATCH, POST_PATCH, PRE_UNPATCH, POST_UNPATCH = CALLBACKS

# patch events; more may appear in future writers ("more allowed"), so an
# unknown patch event is skipped by the engine, not an error.
PATCH_EVENTS = ("enable", "enable_failed", "disable", "replaced", "removed")
TRANSITION_EVENTS = ("init", "start", "complete", "reverse", "cancel", "force")
TARGETS = ("patched", "unpatched")
MODULE_EVENTS = ("coming", "live", "going", "refused")
EVIDENCE = ("direct", "core", "inferred")

VMLINUX = "vmlinux"

# stall records (tracer/observe/stalls.py): information about an open transition's
# blockers, never judged; more events and reasons may appear in later writers
STALL_EVENTS = ("blocked", "switched", "overflow", "signalled", "cleared")
STALL_TASK_EVENTS = ("blocked", "switched")          # about one task: pid, comm, reason
STALL_REASONS = ("running", "unreliable_stack", "sleeping_on_function", "not_switched", "error")

RECORD_TYPES = ("patch", "transition", "module", "callback", "loss", "stall")


class RecordError(ValueError):
    """A record that is not trace format v1. The message names the field."""


# --- builders (writers use these; they produce exactly what readers accept) --

def header(kernel: str, *, state: dict | None = None, **extra) -> dict:
    """The first line of a trace.

    ``state`` is what the writer saw when it started: ``{"patches": [{"name",
    "enabled", "transition", "target", "objects": [...]}], "modules": [names]}``.
    Cycles that began before the trace are judged from it as ``unknown``.
    """
    h = {"type": "header", "format": FORMAT, "version": VERSION, "kernel": kernel}
    if state is not None:
        h["state"] = state
    h.update(extra)
    return h


def patch_enable(seq: int, ts_ns: int, patch: str, objects: list[dict], *,
                 replace: bool = False) -> dict:
    """``objects``: ``[{"name": "vmlinux" | module, "callbacks": [names]}]`` in
    the patch's own object order (the order the kernel runs them in)."""
    return {"type": "patch", "seq": seq, "ts_ns": ts_ns, "patch": patch,
            "event": "enable", "replace": bool(replace), "objects": objects}


def patch_event(seq: int, ts_ns: int, patch: str, event: str, **fields) -> dict:
    r = {"type": "patch", "seq": seq, "ts_ns": ts_ns, "patch": patch, "event": event}
    r.update(fields)
    return r


def transition(seq: int, ts_ns: int, patch: str, event: str, target: str) -> dict:
    return {"type": "transition", "seq": seq, "ts_ns": ts_ns, "patch": patch,
            "event": event, "target": target}


def module(seq: int, ts_ns: int, name: str, event: str) -> dict:
    return {"type": "module", "seq": seq, "ts_ns": ts_ns, "module": name, "event": event}


def callback(seq: int, ts_ns: int, patch: str, obj: str, cb: str, *,
             ret: int | None = None, evidence: str = "direct") -> dict:
    r = {"type": "callback", "seq": seq, "ts_ns": ts_ns, "patch": patch,
         "object": obj, "callback": cb, "evidence": evidence}
    if ret is not None:
        r["ret"] = ret
    return r


def loss(seq: int, ts_ns: int, count: int, *, reason: str | None = None) -> dict:
    """``count`` records were lost right here (0: an unknown number, e.g. a
    probe that fired mid-operation, a hold that expired); ``reason`` says why."""
    r = {"type": "loss", "seq": seq, "ts_ns": ts_ns, "count": count}
    if reason is not None:
        r["reason"] = reason
    return r


def stall(seq: int, ts_ns: int, patch: str, target: str, event: str, *, since_ns: int,
          function: str | None = None, **fields) -> dict:
    """A transition's blockers (docs/trace-format.md, `stall`). Task events
    carry ``pid``, ``comm``, ``reason`` (and ``function`` when known); the
    others ``tasks`` (and ``cause`` for `cleared`)."""
    r = {"type": "stall", "seq": seq, "ts_ns": ts_ns, "patch": patch, "target": target,
         "event": event, "since_ns": since_ns}
    if function:
        r["function"] = function
    r.update(fields)
    return r


# --- checking what is read back ---------------------------------------------

def _str(rec: dict, key: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v:
        raise RecordError(f"field '{key}' must be a non-empty string")
    return v


def _int(rec: dict, key: str) -> int:
    v = rec.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise RecordError(f"field '{key}' must be an integer")
    return v


def _one_of(rec: dict, key: str, allowed: tuple[str, ...]) -> str:
    v = _str(rec, key)
    if v not in allowed:
        raise RecordError(f"field '{key}' is {v!r}, expected one of {', '.join(allowed)}")
    return v


def check_header(h: object) -> dict:
    """Raise RecordError unless ``h`` is a v1 header (unknown fields ignored)."""
    if not isinstance(h, dict) or h.get("type") != "header":
        raise RecordError("first line is not a klptrace header "
                          '(expected {"type":"header","format":"klptrace",...})')
    if h.get("format") != FORMAT:
        raise RecordError(f"header format is {h.get('format')!r}, expected 'klptrace'")
    if h.get("version") != VERSION:
        raise RecordError(f"unsupported trace format version {h.get('version')!r}"
                          f" (this klptrace reads version {VERSION})")
    state = h.get("state")
    if state is not None and not isinstance(state, dict):
        raise RecordError("header field 'state' must be an object")
    return h


_CALLBACK_SET = frozenset(CALLBACKS)
_TRANSITION_SET = frozenset(TRANSITION_EVENTS)
_TARGET_SET = frozenset(TARGETS)
_MODULE_SET = frozenset(MODULE_EVENTS)
_EVIDENCE_SET = frozenset(EVIDENCE)


def check_record(rec: object) -> bool:
    """Validate one record. Return False for an unknown record type (to be
    skipped with a warning); raise RecordError for a malformed known one.

    The validator calls this once per line: the common, valid case is a few
    inline checks; only a failing record goes through the slow path that
    names the offending field."""
    # `type(v) is str and v != ""` is written out, not a helper: a call per
    # field was a tenth of the validator's time.
    try:
        t = rec["type"]
        seq, ts = rec["seq"], rec["ts_ns"]
        ok = type(seq) is int and type(ts) is int
        if t == "callback":
            p, o, ret, evd = rec["patch"], rec["object"], rec.get("ret"), rec.get("evidence")
            ok = (ok and rec["callback"] in _CALLBACK_SET
                  and type(p) is str and p != "" and type(o) is str and o != ""
                  and (ret is None or type(ret) is int)
                  and (evd is None or evd in _EVIDENCE_SET))
        elif t == "transition":
            p = rec["patch"]
            ok = (ok and rec["event"] in _TRANSITION_SET and rec["target"] in _TARGET_SET
                  and type(p) is str and p != "")
        elif t == "module":
            m = rec["module"]
            ok = ok and rec["event"] in _MODULE_SET and type(m) is str and m != ""
        elif t == "patch":
            # enable and enable_failed carry more fields: the full check below
            p, e = rec["patch"], rec["event"]
            ok = (ok and type(p) is str and p != "" and type(e) is str and e != ""
                  and e != "enable" and e != "enable_failed")
        elif t == "loss" or t == "stall":
            ok = False          # rare: the full check below
        elif type(t) is str and ok:
            return False        # unknown type: skipped with a warning
    except (KeyError, TypeError):
        ok = False
    if ok:
        return True
    return _check_record_slow(rec)


def _check_record_slow(rec: object) -> bool:
    if not isinstance(rec, dict):
        raise RecordError("record is not a JSON object")
    rtype = rec.get("type")
    if not isinstance(rtype, str):
        raise RecordError("field 'type' must be a string")
    _int(rec, "seq")
    _int(rec, "ts_ns")
    if rtype == "callback":
        _str(rec, "patch")
        _str(rec, "object")
        _one_of(rec, "callback", CALLBACKS)
        ret = rec.get("ret")
        if ret is not None and (not isinstance(ret, int) or isinstance(ret, bool)):
            raise RecordError("field 'ret' must be an integer")
        ev = rec.get("evidence")
        if ev is not None:
            _one_of(rec, "evidence", EVIDENCE)
    elif rtype == "transition":
        _str(rec, "patch")
        _one_of(rec, "event", TRANSITION_EVENTS)
        _one_of(rec, "target", TARGETS)
    elif rtype == "patch":
        _str(rec, "patch")
        ev = _str(rec, "event")
        if ev == "enable":
            objs = rec.get("objects")
            if not isinstance(objs, list):
                raise RecordError("patch 'enable' needs a list 'objects'")
            for o in objs:
                if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                    raise RecordError("each object needs a string 'name'")
                cbs = o.get("callbacks", [])
                if not isinstance(cbs, list) or any(c not in CALLBACKS for c in cbs):
                    raise RecordError(f"object {o.get('name')!r}: 'callbacks' must list "
                                      f"names from {', '.join(CALLBACKS)}")
        elif ev == "enable_failed":
            if "ret" in rec:
                _int(rec, "ret")
    elif rtype == "module":
        _str(rec, "module")
        _one_of(rec, "event", MODULE_EVENTS)
    elif rtype == "loss":
        if _int(rec, "count") < 0:
            raise RecordError("field 'count' must not be negative")
    elif rtype == "stall":
        _check_stall(rec)
    else:
        return False
    return True


def _check_stall(rec: dict) -> None:
    """A stall record: the fields every event has, and a task event's task.
    Unknown events and reasons are accepted (later writers may add some;
    the record is information, never judged)."""
    _str(rec, "patch")
    _one_of(rec, "target", TARGETS)
    event = _str(rec, "event")
    _int(rec, "since_ns")
    fn = rec.get("function")
    if fn is not None and not isinstance(fn, str):
        raise RecordError("field 'function' must be a string")
    if event in STALL_TASK_EVENTS:
        if _int(rec, "pid") < 0:
            raise RecordError("field 'pid' must not be negative")
        if not isinstance(rec.get("comm"), str):
            raise RecordError("field 'comm' must be a string")
        _str(rec, "reason")
    elif event in STALL_EVENTS:
        if _int(rec, "tasks") < 0:
            raise RecordError("field 'tasks' must not be negative")
