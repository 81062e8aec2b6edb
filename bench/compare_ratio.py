#!/usr/bin/env python3
"""kubesbc / Kamailio ratios from compare.sh results: compare_ratio.py RESULTS_DIR

Reads kubesbc-<tr>.json and kamailio-dispatcher-<tr>-w2.json (find_max_cps.py output) and prints
a markdown table: max CPS at 0 failed calls and proxy CPU microseconds per call (at each
proxy's own max passing step), with kubesbc/Kamailio ratios. Targets (issue 3): CPS ratio >= 1.5,
CPU-per-call ratio <= 0.5.
"""
import json
import sys
from pathlib import Path


def load(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cpu_per_call(r):
    am = (r or {}).get("at_max") or {}
    return (am.get("cpu_us_per_call") or {}).get("proxy")


def main() -> int:
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    print("| transport | kubesbc max CPS | Kamailio max CPS | CPS ratio (target >= 1.5) "
          "| kubesbc CPU us/call | Kamailio CPU us/call | CPU ratio (target <= 0.5) |")
    print("|---|---|---|---|---|---|---|")
    for tr in ("udp", "tcp"):
        k = load(d / f"kubesbc-{tr}.json")
        m = load(d / f"kamailio-dispatcher-{tr}-w2.json")
        if not k and not m:
            continue
        kc, mc = (k or {}).get("max_cps"), (m or {}).get("max_cps")
        ku, mu = cpu_per_call(k), cpu_per_call(m)
        cps_ratio = f"{kc / mc:.2f}" if kc is not None and mc else "-"
        cpu_ratio = f"{ku / mu:.2f}" if ku is not None and mu else "-"
        f = lambda x: "-" if x is None else (f"{x:.0f}" if isinstance(x, float) else str(x))
        print(f"| {tr} | {f(kc)} | {f(mc)} | {cps_ratio} | {f(ku)} | {f(mu)} | {cpu_ratio} |")
    print()
    print("CPU us/call: CPU time of the proxy's whole process tree per call, at its max passing step.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
