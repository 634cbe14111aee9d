"""The image job: its throughput against the simulator's CDN, and the task sync's speed with
the image job running beside it, against without (run by hand).

    python benchmarks/images.py --tasks 50000 --pictures 5000 --repeat 3

Two simulators run in their own processes: one serving --tasks tasks for the sync, one with
--images serving the pictures of a second source. Jobs take turns, each in a fresh process:

* sync-alone: a backfill of --tasks tasks into a fresh SQLite archive (as the CLI runs it);
* sync-with-images: the same, while in the same process the image job fetches the pictures
  of the second source into the same archive, over and over, yielding to the sync as the
  daemon's image job does (no download starts while a task run is under way);
* sync-with-images-unyielding: the same without yielding (the image job competing for the
  two cores with the sync: the worst case, not what the daemon does);
* images: the image job alone over --pictures tasks' links: files/s and MB/s.

Prints medians and the ratios against sync-alone (target: within noise of 1 for the daemon's
way). The pictures' simulator runs on the same two cores: a real CDN would not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simproc import start_simulator  # noqa: E402  (benchmarks/simproc.py)

KINDS = ["sync-alone", "sync-with-images", "sync-with-images-unyielding", "images"]


def job(kind: str, tasks_url: str, pictures_url: str, tmp: str) -> dict[str, Any]:
    from sync.archive import schema
    from sync.archive.store import Store
    from sync.config import ImagesSettings, SourceSettings
    from sync.images import job as images
    from sync.jobs import pipeline
    from sync.server.client import connect

    store = Store(f"sqlite:///{tmp}/bench.db")
    schema.upgrade(store)
    conf = ImagesSettings(
        enabled=True,
        dir=Path(tmp) / "images",
        allow_hosts=["127.0.0.1"],
        max_requests_per_second=10_000,
    )
    pics = SourceSettings(name="pics", base_url=pictures_url, max_requests_per_second=10_000)
    if kind != "sync-alone":
        with connect(pics) as client:
            pipeline.backfill(store, client, pics)
    if kind == "images":
        t0 = time.perf_counter()
        run = images.run(store, conf, [("pics", pictures_url)])
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "files": run.fetched, "bytes": run.bytes}
    stop = threading.Event()
    fetched = [0]
    syncing = threading.Event()
    yield_to = syncing.is_set if kind == "sync-with-images" else None

    def keep_fetching() -> None:
        from sqlalchemy import update

        from sync.archive.models import TaskImage

        while not stop.is_set():
            fetched[0] += images.run(
                store, conf, [("pics", pictures_url)], stop=stop, yield_to=yield_to
            ).fetched
            with store.write() as conn:  # and again: the files are due once more
                conn.execute(update(TaskImage).values(state="pending", attempts=0))

    side = threading.Thread(target=keep_fetching)
    if kind.startswith("sync-with-images"):
        side.start()
    src = SourceSettings(name="main", base_url=tasks_url, max_requests_per_second=100_000)
    with connect(src) as client:
        time.sleep(0.5)  # the image job under way first
        syncing.set()
        t0 = time.perf_counter()
        report = pipeline.backfill(store, client, src, fetch_process=True)
        seconds = time.perf_counter() - t0
        syncing.clear()
    stop.set()
    if side.is_alive():
        side.join()
    return {"seconds": seconds, "tasks": report.inserted, "files": fetched[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--pictures", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--urls", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(job(args.job, args.urls[0], args.urls[1], tmp)))
        return
    sims = [start_simulator(args.tasks), start_simulator(args.pictures, "--images", "--seed", "5")]
    urls = [sims[0][1], sims[1][1]]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    try:
        for _ in range(args.repeat):
            for kind in runs:
                out = subprocess.run(
                    [sys.executable, __file__, "--job", kind, "--urls", *urls],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
                if out.returncode != 0:
                    print(f"{kind} failed: {out.stderr.strip().splitlines()[-5:]}")
                    continue
                runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        for proc, _url in sims:
            proc.terminate()
            proc.wait()
    alone = statistics.median(r["tasks"] / r["seconds"] for r in runs["sync-alone"])
    beside = statistics.median(r["tasks"] / r["seconds"] for r in runs["sync-with-images"])
    files = statistics.median(r["files"] / r["seconds"] for r in runs["images"])
    mb = statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in runs["images"])
    during = statistics.median(r["files"] for r in runs["sync-with-images"])
    rude = statistics.median(r["tasks"] / r["seconds"] for r in runs["sync-with-images-unyielding"])
    rude_files = statistics.median(r["files"] for r in runs["sync-with-images-unyielding"])
    print(f"sync alone                 {alone:>9,.0f} tasks/s")
    print(f"sync beside images         {beside:>9,.0f} tasks/s  ({during:,.0f} files meanwhile)")
    print(f"  ratio                    {beside / alone:.2f}  (target: within noise of 1.00)")
    print(f"sync beside images, rude   {rude:>9,.0f} tasks/s  ({rude_files:,.0f} files meanwhile)")
    print(f"  ratio                    {rude / alone:.2f}  (the image job not yielding)")
    print(f"image job alone            {files:>9,.0f} files/s  ({mb:.1f} MB/s of small pictures)")


if __name__ == "__main__":
    main()
