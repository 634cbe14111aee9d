"""Backfill throughput and memory, against the built-in simulator in its own process.

Run by hand (never in the test suite):

    python benchmarks/backfill.py --tasks 100000 --repeat 3
    python benchmarks/backfill.py --tasks 1000000 --repeat 1 --only tasksync-sqlite

Every measurement runs in a fresh subprocess (so peak RSS is its own) against the same
simulator; medians of --repeat runs are printed with ratios taken within this one run:
fetch-only and write-only limits, tasksync backfill into SQLite, PostgreSQL and MariaDB (with
the archive's bytes a task on disk), a re-backfill over an unchanged server, and dlt's rest_api
source when `import dlt` works (its bytes counted the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1/postgres")
MY_HOST = os.environ.get("BENCH_MARIADB_HOST", "127.0.0.1")
JOBS = [
    "fetch",
    "write-sqlite",
    "tasksync-sqlite",
    "rebackfill-sqlite",
    "tasksync-postgresql",
    "write-postgresql",
    "tasksync-mariadb",
    "dlt-sqlite",
    "dlt-postgresql",
]


def peak_rss_mb() -> float:
    """This process's own peak: VmHWM, which starts afresh at exec (ru_maxrss would carry
    over the driver's size from the fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreeRss:
    """Samples the resident memory of this process plus its children (tasksync's fetch
    process, a peer's helpers) every 50 ms and keeps the largest sum. (`ru_maxrss` is no use
    for children: Linux carries the parent's size at fork across the exec.)"""

    def __init__(self) -> None:
        self.peak_kb = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _rss_kb(pid: int | str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        me = os.getpid()
        while not self.done.wait(0.05):
            total = self._rss_kb(me)
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        stat = (entry / "stat").read_text()
                    except OSError:
                        continue
                    if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                        total += self._rss_kb(entry.name)
            self.peak_kb = max(self.peak_kb, total)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return max(self.peak_kb / 1024, peak_rss_mb())


# ---- jobs (each runs in its own process) -------------------------------------------------------
def job_fetch(base: str, tasks: int) -> dict[str, Any]:
    """httpx + orjson pulling every page, nothing else: the fetch-only limit."""
    import httpx
    import orjson

    n = got = 0
    t0 = time.perf_counter()
    with httpx.Client(timeout=30) as http:
        while True:
            r = http.post(
                f"{base}/mj/task/query",
                content=orjson.dumps({"pageNumber": n, "pageSize": 100, "sort": "id,desc"}),
                headers={"Content-Type": "application/json"},
            )
            page = orjson.loads(r.content)
            got += len(page["content"])
            n += 1
            if page["last"] or not page["content"]:
                break
    return {"tasks": got, "seconds": time.perf_counter() - t0, "requests": n}


def fresh_db(kind: str, tmp: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp}/bench.db"
    name = f"bench_{os.getpid()}"
    if kind == "mariadb":
        import pymysql

        with pymysql.connect(host=MY_HOST, user="root", password="", autocommit=True) as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
            conn.cursor().execute(f"CREATE DATABASE {name}")
        return f"mysql+pymysql://root@{MY_HOST}/{name}"
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name


def drop_db(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    elif url.startswith("mysql"):
        import pymysql

        with pymysql.connect(host=MY_HOST, user="root", password="", autocommit=True) as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")


def dlt_bytes(url: str, tmp: str) -> int:
    """What dlt's dataset takes on disk, counted as tasksync's archive is: its SQLite file
    (dlt attaches the dataset as a file of its own, `bench__bench.db`, beside the main one;
    the staging copy it keeps for merges, about as large again, is not counted), or the
    dataset schema's tables with indexes and TOAST on PostgreSQL (staging not counted)."""
    if url.startswith("sqlite"):
        return sum(p.stat().st_size for p in Path(tmp).glob("bench__bench.db*"))
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        got = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = 'bench'"
        ).fetchone()
    return int(got[0] or 0) if got else 0


def job_write(kind: str, tasks: int, tmp: str) -> dict[str, Any]:
    """The driver's executemany of tasksync's own upsert, rows prepared beforehand, one
    transaction: the write-only limit for this schema."""
    from datetime import UTC, datetime

    from sync.archive import schema
    from sync.archive.store import Store
    from sync.simulator import Simulator
    from sync.tasks.records import build, fingerprint

    url = fresh_db(kind, tmp)
    store = Store(url)
    schema.upgrade(store)
    sim = Simulator(tasks, seed=1)
    at = store.binder.ts(datetime.now(UTC))
    sql = store.upsert_sql
    spent = 0.0
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        cur = raw.cursor()
        if kind == "sqlite":
            cur.execute("BEGIN")
        for lo in range(0, tasks, 1000):
            rows = []
            for i in range(lo, min(tasks, lo + 1000)):
                rec = build("b", fingerprint(sim.task(i)))  # type: ignore[arg-type]
                rows.append(store.binder.params(rec, at))  # type: ignore[arg-type]
            t0 = time.perf_counter()
            cur.executemany(sql, rows)
            spent += time.perf_counter() - t0
        t0 = time.perf_counter()
        raw.commit()
        spent += time.perf_counter() - t0
    store.dispose()
    drop_db(url)
    return {"tasks": tasks, "seconds": spent, "requests": 0}


def job_tasksync(kind: str, base: str, tasks: int, tmp: str, again: bool) -> dict[str, Any]:
    from sync.archive import schema
    from sync.archive.store import Store
    from sync.config import SourceSettings
    from sync.jobs import pipeline
    from sync.server.client import connect

    url = fresh_db(kind, tmp)
    store = Store(url)
    schema.upgrade(store)
    src = SourceSettings(
        name="b",
        base_url=base,
        max_requests_per_second=100_000,
        concurrency=int(os.environ.get("BENCH_CONCURRENCY", "2")),
    )
    with connect(src) as client:
        if again:
            pipeline.backfill(store, client, src, fetch_process=True)
        t0 = time.perf_counter()
        report = pipeline.backfill(store, client, src, fetch_process=True)  # as the CLI does
        seconds = time.perf_counter() - t0
    size = schema.archive_bytes(store)
    store.dispose()
    drop_db(url)
    done = report.unchanged if again else report.inserted
    assert done == tasks, (done, tasks)
    return {"tasks": done, "seconds": seconds, "requests": report.requests, "bytes": size}


def job_dlt(kind: str, base: str, tasks: int, tmp: str) -> dict[str, Any]:
    """dlt's rest_api source, merging on id into the same database through SQLAlchemy."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    url = fresh_db(kind, tmp)
    source = rest_api_source(
        {
            "client": {"base_url": base},
            "resources": [
                {
                    "name": "tasks",
                    "primary_key": "id",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": "mj/task/query",
                        "method": "POST",
                        "json": {"pageSize": 100, "sort": "id,desc"},
                        "data_selector": "content",
                        "paginator": {
                            "type": "page_number",
                            "page_body_path": "pageNumber",
                            "base_page": 0,
                            "total_path": "totalPages",
                        },
                    },
                }
            ],
        }
    )
    dest_url = url.replace("postgresql+psycopg", "postgresql+psycopg")
    pipe = dlt.pipeline(
        pipeline_name=f"bench{os.getpid()}",
        pipelines_dir=tmp,
        destination=dlt.destinations.sqlalchemy(dest_url),
        dataset_name="bench",
    )
    t0 = time.perf_counter()
    pipe.run(source)
    seconds = time.perf_counter() - t0
    with pipe.sql_client() as sql:
        loaded = sql.execute_sql(f"SELECT count(*) FROM {sql.make_qualified_table_name('tasks')}")[
            0
        ][0]
    assert loaded == tasks, (loaded, tasks)
    size = dlt_bytes(url, tmp)
    drop_db(url)
    return {"tasks": tasks, "seconds": seconds, "requests": -1, "bytes": size}


def run_job(name: str, base: str, tasks: int) -> dict[str, Any]:
    tree = TreeRss()
    with tempfile.TemporaryDirectory() as tmp:
        kind = name.rsplit("-", 1)[-1]
        if name == "fetch":
            out = job_fetch(base, tasks)
        elif name.startswith("write-"):
            out = job_write(kind, tasks, tmp)
        elif name.startswith("tasksync-"):
            out = job_tasksync(kind, base, tasks, tmp, again=False)
        elif name.startswith("rebackfill-"):
            out = job_tasksync(kind, base, tasks, tmp, again=True)
        else:
            out = job_dlt(kind, base, tasks, tmp)
    out["peak_rss_mb"] = tree.stop()
    return out


# ---- driver --------------------------------------------------------------------------------------
def available(name: str) -> str | None:
    if name.startswith("dlt-"):
        try:
            import dlt  # noqa: F401
        except ImportError:
            return "dlt not installed (pip install 'dlt[sqlalchemy]')"
    if name.endswith("mariadb"):
        try:
            import pymysql

            pymysql.connect(host=MY_HOST, user="root", password="", connect_timeout=3).close()
        except Exception as exc:
            return f"MariaDB unreachable: {str(exc).splitlines()[0]}"
    if name.endswith("postgresql"):
        try:
            import psycopg

            psycopg.connect(PG_ADMIN, connect_timeout=3).close()
        except Exception as exc:
            return f"PostgreSQL unreachable: {str(exc).splitlines()[0]}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=JOBS, default=JOBS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        print(json.dumps(run_job(args.job, args.base, args.tasks)))
        return
    sim, base = start_simulator(args.tasks)
    results: dict[str, dict[str, float]] = {}
    names = []
    for name in args.only:
        why = available(name)
        if why:
            print(f"{name:<22} skipped: {why}")
        else:
            names.append(name)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        # Round-robin (every job once, then again): slow drifts of a noisy machine hit every
        # job alike, so the ratios stay fair.
        for _ in range(args.repeat):
            for name in names:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--job",
                        name,
                        "--base",
                        base,
                        "--tasks",
                        str(args.tasks),
                    ],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
                if out.returncode != 0:
                    print(f"{name:<22} failed: {out.stderr.strip().splitlines()[-6:]}")
                    continue
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for name in names:
            if not runs[name]:
                continue
            rates = [r["tasks"] / r["seconds"] for r in runs[name]]
            res = {
                "rate": statistics.median(rates),
                "rss": max(r["peak_rss_mb"] for r in runs[name]),
                "requests": runs[name][0]["requests"],
                "spread": (min(rates), max(rates)),
            }
            if "bytes" in runs[name][0]:
                res["bytes"] = statistics.median(r["bytes"] / r["tasks"] for r in runs[name])
            results[name] = res
            spread = f"{min(rates):,.0f}..{max(rates):,.0f}"
            on_disk = f"  {res['bytes']:,.0f} B/task on disk" if "bytes" in res else ""
            print(
                f"{name:<22} {res['rate']:>9,.0f} tasks/s  (runs {spread})"
                f"  peak RSS {res['rss']:>5.0f} MB  requests {res['requests']}{on_disk}",
                flush=True,
            )
    finally:
        sim.terminate()
        sim.wait()
    r = {k: v["rate"] for k, v in results.items()}
    print(f"\n{args.tasks:,} tasks, medians of {args.repeat}; ratios within this run:")

    def line(label: str, value: str, target: str) -> None:
        print(f"  {label:<38} = {value}  (target {target})")

    if {"fetch", "write-sqlite", "tasksync-sqlite"} <= r.keys():
        limit = min(r["fetch"], r["write-sqlite"])
        line(
            "sqlite backfill / min(fetch, write)", f"{r['tasksync-sqlite'] / limit:.2f}", ">= 0.40"
        )
    if {"tasksync-sqlite", "dlt-sqlite"} <= r.keys():
        line("sqlite backfill / dlt", f"{r['tasksync-sqlite'] / r['dlt-sqlite']:.1f}x", ">= 10x")
    if {"tasksync-postgresql", "write-postgresql"} <= r.keys():
        ratio = r["tasksync-postgresql"] / r["write-postgresql"]
        line("postgresql backfill / write-only", f"{ratio:.2f}", ">= 0.60")
    if {"fetch", "rebackfill-sqlite"} <= r.keys():
        line("re-backfill / fetch", f"{r['rebackfill-sqlite'] / r['fetch']:.2f}", ">= 0.80")
    b = {k: v["bytes"] for k, v in results.items() if "bytes" in v}
    if {"tasksync-sqlite", "dlt-sqlite"} <= b.keys():
        ratio = b["tasksync-sqlite"] / b["dlt-sqlite"]
        line("sqlite bytes a task / dlt", f"{ratio:.2f}", "<= 0.75")
    for name in sorted(b):
        line(f"{name} bytes a task", f"{b[name]:,.0f}", "report")


if __name__ == "__main__":
    main()
