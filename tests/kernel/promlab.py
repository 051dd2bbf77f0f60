"""A real Prometheus for the lab (tests/kernel/test_daemon.py, case "stall"):
the directory the guest starts Debian's `prometheus` with.

* prometheus.yml: one job, "klptrace" (the name the shipped rules select
  on), scraping the daemon at 127.0.0.1:19557 every second, rules evaluated
  every second;
* rules.yml: the shipped deploy/prometheus/klptrace-rules.yml with every
  `for:` shortened to FOR (the shipped 5 to 15 minutes do not fit a test);
  the expressions, labels and annotations are the shipped ones, unchanged
  (``same_rules_but_for`` checks it);
* exprs.json: every PromQL expression of the shipped Grafana dashboard, its
  variables replaced as Grafana would for this one host;
* the prometheus binary, copied in when the guest runs over a root of its own
  (it links libc only), else the host's /usr/bin/prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy/prometheus/klptrace-rules.yml"
DASHBOARD = REPO / "deploy/grafana/klptrace-dashboard.json"
FOR = "3s"
RATE_INTERVAL = "30s"        # Grafana's $__rate_interval at a 1 s scrape is at least 4 scrapes
RANGE = "10m"                # $__range


def shortened_rules(text: str) -> str:
    return re.sub(r"^(\s+for:) \S+$", rf"\1 {FOR}", text, flags=re.M)


def same_rules_but_for(shipped: str, copy: str) -> bool:
    a, b = yaml.safe_load(shipped), yaml.safe_load(copy)
    for ga, gb in zip(a["groups"], b["groups"]):
        for ra, rb in zip(ga["rules"], gb["rules"]):
            ra, rb = dict(ra), dict(rb)
            if "for" in ra and rb.pop("for") != FOR:
                return False
            ra.pop("for", None)
            if ra != rb:
                return False
    return len(a["groups"]) == len(b["groups"])


def dashboard_exprs(job: str = "klptrace") -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            e = (t["expr"].replace("$job", job).replace('instance=~"$instance"', 'instance=~".*"')
                 .replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE))
            assert "$" not in e, e
            out.append(e)
    return out


def prepare(out: Path, kernel) -> dict[str, str]:
    """Write the directory; the guest's environment for it."""
    out.mkdir(parents=True, exist_ok=True)
    shipped = RULES.read_text()
    copy = shortened_rules(shipped)
    assert same_rules_but_for(shipped, copy)
    (out / "rules.yml").write_text(copy)
    (out / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(out / "rules.yml")],
        "scrape_configs": [{"job_name": "klptrace",
                            "static_configs": [{"targets": ["127.0.0.1:19557"]}]}]}))
    (out / "exprs.json").write_text(json.dumps(dashboard_exprs(), indent=1))
    binary = Path(shutil.which("prometheus") or "/usr/bin/prometheus")
    if getattr(kernel, "root", None) is not None:
        shutil.copy2(binary, out / "prometheus")
        binary = out / "prometheus"
    return {"KLPT_PROM": str(out), "KLPT_PROMETHEUS": str(binary)}
