"""Server families: trueai's backfill beside plus's, and novicezk's whole-list sweep (run by hand).

    python benchmarks/families.py --tasks 100000 --repeat 3 --novicezk 500000

Simulators (each in its own process) play plus and trueai with --tasks tasks and novicezk with
--novicezk tasks. Every measurement runs in a fresh process, the jobs taking turns:

* plus-backfill, trueai-backfill: tasksync backfill into a fresh SQLite file (tasks/s);
* novicezk-sweep: a sweep of the whole list into a fresh SQLite file, then a second sweep over
  the unchanged list (tasks/s of each, and the peak RSS of the job's process tree, where the
  target is under 200 MB: the list is parsed as a stream, so memory must not follow its size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simproc import start_simulator  # noqa: E402  (benchmarks/simproc.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backfill import TreeRss  # noqa: E402  (the sibling benchmark's process-tree sampler)


def job(name: str, base: str, tasks: int) -> dict[str, Any]:
    from sync.archive import schema
    from sync.archive.store import Store
    from sync.config import SourceSettings
    from sync.jobs import pipeline
    from sync.server.client import connect

    api = name.split("-")[0]
    tree = TreeRss()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/bench.db")
        schema.upgrade(store)
        src = SourceSettings(
            name="b",
            base_url=base,
            api=api,
            max_requests_per_second=100_000,
            timeout_s=600,
            mass_gone_share=1.0,
        )
        out: dict[str, Any] = {"tasks": tasks}
        with connect(src) as client:
            if api == "novicezk":
                t0 = time.perf_counter()
                first = pipeline.sweep(store, client, src)
                out["seconds"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                again = pipeline.sweep(store, client, src)
                out["again_seconds"] = time.perf_counter() - t0
                assert first.inserted == tasks and again.unchanged == tasks, (first, again)
            else:
                t0 = time.perf_counter()
                report = pipeline.backfill(store, client, src, fetch_process=True)
                out["seconds"] = time.perf_counter() - t0
                assert report.inserted == tasks, report
        store.dispose()
    out["peak_rss_mb"] = tree.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--novicezk", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        print(json.dumps(job(args.job, args.base, args.tasks)))
        return
    sims = {
        "plus": start_simulator(args.tasks, "--api", "plus"),
        "trueai": start_simulator(args.tasks, "--api", "trueai"),
        "novicezk": start_simulator(args.novicezk, "--api", "novicezk"),
    }
    jobs = {
        "plus-backfill": args.tasks,
        "trueai-backfill": args.tasks,
        "novicezk-sweep": args.novicezk,
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
    try:
        for _ in range(args.repeat):
            for name, tasks in jobs.items():
                base = sims[name.split("-")[0]][1]
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--job",
                        name,
                        "--base",
                        base,
                        "--tasks",
                        str(tasks),
                    ],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                if out.returncode != 0:
                    print(f"{name:<16} failed: {out.stderr.strip().splitlines()[-6:]}")
                    continue
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        for proc, _ in sims.values():
            proc.terminate()
            proc.wait()
    print(f"medians of {args.repeat} runs, jobs taking turns:")
    rates = {}
    for name, done in runs.items():
        if not done:
            continue
        rate = statistics.median(r["tasks"] / r["seconds"] for r in done)
        rates[name] = rate
        extra = ""
        if name == "novicezk-sweep":
            again = statistics.median(r["tasks"] / r["again_seconds"] for r in done)
            extra = f"; unchanged re-sweep {again:,.0f} tasks/s"
        rss = max(r["peak_rss_mb"] for r in done)
        print(
            f"  {name:<16} {done[0]['tasks']:>9,} tasks  {rate:>8,.0f} tasks/s{extra}  "
            f"peak RSS {rss:.0f} MB"
        )
    if {"plus-backfill", "trueai-backfill"} <= rates.keys():
        ratio = rates["trueai-backfill"] / rates["plus-backfill"]
        print(f"  trueai / plus backfill: {ratio:.2f}")


if __name__ == "__main__":
    main()
