"""`tasksync report` over large SQLite archives: wall time and peak memory (run by hand).

    python benchmarks/report.py --tasks 100000 1000000 --repeat 3

Builds an archive of each size from the simulator's tasks (saved through the store, untimed;
kept in --dir between runs), then runs `tasksync report` (table output to /dev/null, and once
with --html) in a fresh process per run, which reports its own wall time and peak RSS
(VmHWM). Prints medians, and the peak at the largest size against the smallest (target: within
20 %); the target for a million tasks is under 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def job(url: str, html: str | None) -> None:
    """One report in this (fresh) process: its time and peak memory as JSON on stdout."""
    from sync.cli import main

    args = ["--db", url, "report"] + (["--html", html] if html else [])
    out = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        t0 = time.perf_counter()
        try:
            main(args)
        except SystemExit as exc:
            if exc.code:
                raise
        seconds = time.perf_counter() - t0
        sys.stdout.flush()
    os.dup2(out, 1)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def build(path: Path, tasks: int) -> None:
    from sync.archive import schema
    from sync.archive.store import Store
    from sync.simulator import Simulator

    if path.exists():
        return
    store = Store(f"sqlite:///{path}.part")
    schema.upgrade(store)
    sim = Simulator(tasks, seed=1)
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    for lo in range(0, tasks, 5000):
        batch = [sim.task(i) for i in range(lo, min(tasks, lo + 5000))]
        store.save(store.prepare("main", batch, now, build_rows=True), None)
    store.dispose()
    Path(f"{path}.part").rename(path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}.part{suffix}").unlink(missing_ok=True)
    print(f"built {tasks:,} tasks in {time.perf_counter() - t0:.0f}s: {path}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/tasksync-report-bench")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--html", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        job(args.job, args.html)
        return
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    results: dict[tuple[int, bool], tuple[float, float]] = {}
    for n in args.tasks:
        build(Path(args.dir) / f"report-{n}.db", n)
    for n in args.tasks:
        url = f"sqlite:///{Path(args.dir) / f'report-{n}.db'}"
        for html in (False, True):
            runs = []
            for _ in range(args.repeat):
                cmd = [sys.executable, __file__, "--job", url]
                if html:
                    cmd += ["--html", str(Path(args.dir) / f"report-{n}.html")]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            secs = statistics.median(r["seconds"] for r in runs)
            rss = max(r["peak_rss_mb"] for r in runs)
            results[(n, html)] = (secs, rss)
            kind = "--html" if html else "table"
            each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
            print(
                f"{n:>9,} tasks  {kind:<6}  {secs:6.2f} s (runs {each})  peak RSS {rss:5.0f} MB",
                flush=True,
            )
    small, large = min(args.tasks), max(args.tasks)
    if small != large:
        ratio = results[(large, False)][1] / results[(small, False)][1]
        print(f"\npeak RSS at {large:,} / at {small:,}: {ratio:.2f} (target <= 1.20)")
        print(f"report over {large:,} tasks: {results[(large, False)][0]:.2f} s (target < 10 s)")


if __name__ == "__main__":
    main()
