"""Incremental sync cost over a large archive (run by hand).

    python benchmarks/incremental.py --archive 200000 --new 100 --unfinished 50 --repeat 5

Backfills the simulator into a fresh SQLite file (untimed), then repeatedly: k tasks arrive,
u archived tasks are still unfinished (and move on), one `sync` runs. Prints requests and wall
time per sync (median), against the bound ceil(k/page)+ceil(u/100)+2 and the target of at most
5 requests and under 1 s.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.archive import schema
from sync.archive.store import Store
from sync.config import SourceSettings
from sync.jobs import pipeline
from sync.server.client import BY_IDS_MAX, connect
from sync.simulator import Simulator, SimulatorServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--archive", type=int, default=200_000)
    ap.add_argument("--new", type=int, default=100)
    ap.add_argument("--unfinished", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    sim = Simulator(args.archive, seed=3, unfinished_per_mille=0)
    stuck = sim.alive[:: max(1, args.archive // args.unfinished)][: args.unfinished]

    def unfinish() -> None:  # the same u tasks stay unfinished, with moving progress
        for n, i in enumerate(stuck):
            pct = f"{(int(time.time() * 10) + n) % 90}%"
            sim.overrides[i] = dict(
                sim.task(i), status="IN_PROGRESS", progress=pct, finishTime=None
            )

    unfinish()
    with tempfile.TemporaryDirectory() as tmp, SimulatorServer(sim) as server:
        store = Store(args.db or f"sqlite:///{tmp}/inc.db")
        schema.upgrade(store)
        src = SourceSettings(name="bench", base_url=server.url, max_requests_per_second=10_000)
        with connect(src) as client:
            t0 = time.perf_counter()
            pipeline.backfill(store, client, src)
            print(f"archive: {args.archive:,} tasks backfilled in {time.perf_counter() - t0:.1f}s")
            bound = (
                math.ceil(args.new / src.page_size) + math.ceil(args.unfinished / BY_IDS_MAX) + 2
            )
            reqs, secs = [], []
            arrived: list[str] = []
            for _ in range(args.repeat):
                for tid in arrived:  # last round's arrivals have finished since
                    i = sim.index_of(tid)
                    if i is not None:
                        sim.overrides[i] = dict(sim.task(i), status="SUCCESS", progress="100%")
                arrived = sim.arrive(args.new)
                unfinish()
                report = pipeline.incremental(store, client, src)
                reqs.append(report.requests)
                secs.append(report.duration_s)
                print(
                    f"  sync: {report.requests} requests, {report.duration_s * 1000:.0f} ms, "
                    f"+{report.inserted} new, ~{report.changed} changed"
                )
        print(
            f"median: {statistics.median(reqs):.0f} requests (bound {bound}, target <= 5), "
            f"{statistics.median(secs) * 1000:.0f} ms (target < 1000 ms) over "
            f"{store.count_tasks('bench'):,} archived tasks"
        )
        store.dispose()


if __name__ == "__main__":
    main()
