"""`klptrace validate TRACE...`: judge recorded traces post-mortem.

Exit 0: no violations (warnings and unknowns allowed); 1: violations;
2: unusable input (one clear line naming file:line; what was judged before
the bad line is still reported).
"""

from __future__ import annotations

import sys
import time

import click

from klptrace.tracer import exitcodes
from klptrace.tracer.judge.engine import VIOLATION, Engine
from klptrace.tracer.judge.report import FileResult, format_json, format_text
from klptrace.tracer.judge.stallsummary import StallSummary
from klptrace.tracer.model.traceio import TraceInputError, read_trace


def validate_file(path: str) -> FileResult:
    """Stream one trace through a fresh engine."""
    result = FileResult(path)
    stalls = StallSummary()         # stall records: information (the engine skips them)
    stream = read_trace(path, on_warning=result.input_warnings.append)
    try:
        header = next(stream)
        engine = Engine(header)
        result.stats = engine.stats
        feed, findings = engine.feed, result.findings
        for rec in stream:
            found = feed(rec)
            if found:
                findings.extend(found)
            if rec["type"] == "stall":
                stalls.add(rec)
        findings.extend(engine.finish())
    except TraceInputError as e:
        result.error = str(e)
    except StopIteration:   # pragma: no cover - read_trace raises for empty files
        result.error = f"{path}: empty file"
    result.stalls = stalls.finish()
    return result


def write_textfile(path: str, results: list[FileResult]) -> None:
    """Prometheus text exposition for node_exporter's textfile collector,
    written atomically (temporary file + rename) by prometheus_client."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    from klptrace.exporters.metrics import StatsCollector, verdict_gauges
    from klptrace.tracer.judge.engine import Stats

    total = Stats()
    for r in results:
        total.merge(r.stats)
    violations = sum(r.count(VIOLATION) for r in results)
    usable = all(r.error is None for r in results)

    class _Verdict:
        def collect(self):
            yield from verdict_gauges(violations, total.unknown, total.warnings, usable,
                                      time.time())

    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatsCollector(lambda: total))
    reg.register(_Verdict())
    write_to_textfile(path, reg)


@click.command()
@click.argument("traces", nargs=-1, required=True, metavar="TRACE...")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Report for people (text) or machines (json).")
@click.option("--textfile", metavar="PATH",
              help="Also write the verdict as Prometheus metrics (textfile collector).")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary line per file.")
def validate(traces: tuple[str, ...], fmt: str, textfile: str | None, quiet: bool) -> None:
    """Validate recorded traces (.jsonl, .jsonl.gz, - for stdin) against the
    livepatch callback rules."""
    results = [validate_file(p) for p in traces]
    if fmt == "json":
        click.echo(format_json(results))
    else:
        text = format_text(results)
        if quiet:
            text = "\n".join(l for l in text.splitlines() if not l.startswith(" "))
        click.echo(text)
    for r in results:
        if r.error is not None:
            click.echo(f"klptrace validate: {r.error}", err=True)
    if textfile:
        try:
            write_textfile(textfile, results)
        except OSError as e:
            click.echo(f"klptrace validate: cannot write --textfile {textfile}: "
                       f"{e.strerror}; check that its directory exists and is writable",
                       err=True)
            sys.exit(exitcodes.BAD_INPUT)
    if any(r.error is not None for r in results):
        sys.exit(exitcodes.BAD_INPUT)
    if any(r.count(VIOLATION) for r in results):
        sys.exit(exitcodes.VIOLATIONS)
    sys.exit(exitcodes.OK)
