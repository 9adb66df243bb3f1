"""`python -m tests.bench.migration [RUNS]`: medians of `reconciler migrate` vs
`docker-compose down` + `reconciler apply` under load through the edge.

Runs tests/e2e/test_migrate.py RUNS times (default 3, one pytest process at a time: it
publishes a free high port on 127.0.0.1 and cleans up), reads the figures it prints and
prints each run and the medians: failed requests, the longest gap between two successes as
the load generator saw it, the failures outside that gap, the slowest single request, the
migrator's own hand-over time, and the load average when the run ended. Figures are
reported, never asserted.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
LINE = re.compile(r"^\[(migrate|down\+up)\] \d+ requests in [\d.]+s, (\d+) failed .*?longest gap "
                  r"between successes (\d+) ms.*?; (\d+) failed outside the longest gap.*?"
                  r"slowest request (\d+) ms", re.M)
HANDOVER = re.compile(r"^hand-over nginx: \S+ answered (\d+) ms .*?\((.*)\)$", re.M)
KEYS = ("failed", "gap_ms", "outside", "slowest_ms")


def one() -> dict[str, dict[str, float]] | None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/e2e/test_migrate.py", "-n", "0", "-s", "-q",
         "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=900,
        check=False)
    out: dict[str, dict[str, float]] = {}
    for m in LINE.finditer(proc.stdout):
        out[m.group(1)] = dict(zip(KEYS, map(float, m.groups()[1:]), strict=True))
    hand = HANDOVER.search(proc.stdout)
    if hand is not None and "migrate" in out:
        out["migrate"]["handover_ms"] = float(hand.group(1))
        print(f"  timeline: {hand.group(2)}")
    if proc.returncode != 0 or len(out) != 2:
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
        return None
    load = os.getloadavg()[0]
    for fig in out.values():
        fig["load"] = load
    return out


def main(runs: int) -> int:
    results: list[dict[str, dict[str, float]]] = []
    for i in range(runs):
        res = one()
        if res is None:
            print(f"run {i + 1}: FAILED")
            continue
        results.append(res)
        print(f"run {i + 1}: " + "; ".join(
            f"{k}: " + ", ".join(f"{n} {v:.0f}" for n, v in fig.items())
            for k, fig in res.items()), flush=True)
    if not results:
        return 1
    for kind in ("migrate", "down+up"):
        keys = [k for k in results[0][kind]]
        print(f"median of {len(results)} ({kind}): " + ", ".join(
            f"{k} {statistics.median(r[kind][k] for r in results):.1f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
