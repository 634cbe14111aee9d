"""Daemon soak: `tasksync run` for many minutes against a server that stays steady over time.

Run by hand (never in the test suite):

    python benchmarks/soak.py                                   # 20 minutes into SQLite
    python benchmarks/soak.py --db postgresql --minutes 60 --json soak-pg.json
    python benchmarks/soak.py --minutes 3 --sample-s 30 --warmup-min 0     # a quick check

The simulator runs in its own process in its time-driven mode: --tasks listed at the start,
--arrivals-per-s new tasks, --updates-per-s steps of unfinished ones, every task expiring
--ttl-s after it arrived, and a --stuck-share of the arrivals that never progress (they vanish
while unfinished). With tasks = arrivals-per-s x ttl-s the list keeps its size, so a healthy
daemon settles into syncs of a steady cost and sweeps that keep up. A task needs about 4.1
updates to finish, so below ~4.1 x the non-stuck arrivals the server's own unfinished tasks,
which every sync re-checks, grow for about --ttl-s (the script says so at the start; the
"srv unfin" column shows it): at 50 updates/s they do, at the default 100 they do not.

The archive is fresh (a SQLite file in a temp dir, or a new PostgreSQL database that is
dropped at the end), migrated with `tasksync db upgrade`; the daemon (`python -m sync run`,
syncing every --every, sweeping every --sweep-every, metrics on a free port) logs into the
temp dir. Every --sample-s seconds one row: syncs finished in the window with their median
duration and requests, sweeps run / failed / skipped (skips from the daemon's log and from its
`tasksync_runs_total{outcome="skipped"}` metric), the daemon's RSS (its process and its
children, sampled every second), the archive's size and task counts, and what the server
lists. At the end: the table, then the first 5 minutes after --warmup-min against the last 5
(sync duration, requests, RSS; PASS within 20 %), and the totals of sweeps run and skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simproc import free_port  # noqa: E402  (benchmarks/simproc.py)

PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SOURCE = "soak"
WINDOW_MIN = 5.0  # minutes compared at the start (after the warm-up) and at the end
TOLERANCE = 0.20  # last/first within 1 +- this

# The simulator's process: parameters as JSON in argv[1]; prints its URL, then answers each
# "stats" line on stdin with one JSON line; exits when stdin closes (so it never outlives us).
SIM_CODE = """
import json, sys
from sync.simulator import Simulator, SimulatorServer
p = json.loads(sys.argv[1])
tasks = p.pop("tasks")
server = SimulatorServer(Simulator(tasks, **p)).start()
print(json.dumps({"url": server.url}), flush=True)
for line in sys.stdin:
    if line.strip() == "stats":
        print(json.dumps(server.sim.stats()), flush=True)
server.stop()
"""


# ---- processes -----------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def tree_rss_mb(pid: int) -> float:
    return sum(rss_kb(p) for p in [pid, *descendants(pid)]) / 1024


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL whatever is left of a child's process group (it ran in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class SimProcess:
    """The simulator in its own process (time-driven mode), on a free loopback port."""

    def __init__(self, params: dict[str, Any], log_path: Path) -> None:
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SIM_CODE, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env=child_env(),
            start_new_session=True,  # Ctrl-C reaches only us; we stop it in order
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin: IO[str] = self.proc.stdin
        self.stdout: IO[str] = self.proc.stdout
        first = self.stdout.readline()
        if not first:
            self.stop()
            raise RuntimeError(f"the simulator did not start; see {log_path}")
        self.url: str = json.loads(first)["url"]
        self.lock = threading.Lock()

    def stats(self) -> dict[str, Any] | None:
        with self.lock:
            try:
                self.stdin.write("stats\n")
                self.stdin.flush()
                line = self.stdout.readline()
            except (OSError, ValueError):
                return None
        return json.loads(line) if line else None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()  # it exits when its stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
        self.log.close()


# ---- the archive ---------------------------------------------------------------------------------
class Archive:
    """A fresh archive database and the read-only queries the samples need."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.db_name: str | None = None
        if kind == "sqlite":
            self.path = tmp / "soak.db"
            self.url = f"sqlite:///{self.path}"
        else:
            import psycopg

            self.db_name = f"soak_{os.getpid()}_{secrets.token_hex(3)}"
            with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
            base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            self.url = f"{base}/{self.db_name}"
        self.engine: Any = None
        self.seen_runs: set[int] = set()

    def open(self) -> None:
        """Connect for reading (after the migration created the schema)."""
        url = self.url
        if self.kind == "sqlite":  # read-only: our reads never checkpoint or lock the file
            url = f"sqlite:///file:{self.path}?mode=ro&uri=true"
        self.engine = create_engine(url, poolclass=NullPool)

    def _rows(self, sql: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql)))

    def new_runs(self) -> list[dict[str, Any]]:
        """Runs that finished since the last call (each run reported once)."""
        rows = self._rows(
            "SELECT id, kind, outcome, duration_s, requests FROM sync_runs "
            "WHERE finished_at IS NOT NULL AND outcome <> 'running' ORDER BY id"
        )
        out = []
        for r in rows:
            if r.id not in self.seen_runs:
                self.seen_runs.add(r.id)
                out.append(
                    {
                        "kind": r.kind,
                        "outcome": r.outcome,
                        "duration_s": r.duration_s,
                        "requests": r.requests,
                    }
                )
        return out

    def autovacuum(self) -> str | None:
        """PostgreSQL's autovacuum setting (None on SQLite)."""
        return None if self.kind == "sqlite" else str(self._rows("SHOW autovacuum")[0][0])

    def wal_mb(self) -> float | None:
        if self.kind != "sqlite":
            return None
        wal = self.path.with_name(self.path.name + "-wal")
        return wal.stat().st_size / 2**20 if wal.exists() else 0.0

    def size_mb(self) -> float:
        """SQLite: the file plus its WAL; PostgreSQL: the tables with indexes and TOAST."""
        if self.kind == "sqlite":
            return (self.path.stat().st_size / 2**20) + (self.wal_mb() or 0.0)
        rows = self._rows(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'"
        )
        return float(rows[0][0] or 0) / 2**20

    def counts(self) -> dict[str, int]:
        row = self._rows(
            "SELECT count(*), "
            "sum(CASE WHEN gone_at IS NOT NULL THEN 1 ELSE 0 END), "
            "sum(CASE WHEN gone_at IS NULL AND coalesce(status, '') NOT IN "
            "('SUCCESS', 'FAILURE', 'CANCEL') THEN 1 ELSE 0 END) "
            f"FROM tasks WHERE source = '{SOURCE}'"
        )[0]
        return {"tasks": int(row[0] or 0), "gone": int(row[1] or 0), "unfinished": int(row[2] or 0)}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def drop(self, keep: bool) -> None:
        self.close()
        if self.db_name is not None:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        elif not keep:
            for suffix in ("", "-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)


# ---- what the daemon says: its log and its metrics -----------------------------------------------
SKIP_LINE = re.compile(r"\b(sync|sweep) skipped\b")
APS_SKIP = re.compile(r'Execution of job ".*\(trigger: ([^,]+),.*" skipped')
APS_MISSED = re.compile(r'Run time of job ".*\(trigger: ([^,]+),.*" was missed by')


def first_kind(line: str) -> str:
    """The first run kind a log line names ("sync" or "sweep"), else "unknown"."""
    m = re.search(r"\b(sync|sweep)\b", line)
    return m.group(1) if m else "unknown"


class LogWatch:
    """Reads the daemon's log as it grows; counts skipped, missed and failed runs per kind.

    A skip is a line with "skipped": the daemon's own (`source soak sweep skipped: <lock
    holder>`, or `a sync tick came while a run of the source was still going; such ticks are
    skipped`, which newer daemons log once and then only count in a metric) or APScheduler's
    `Execution of job "... (trigger: interval[0:00:30], ...)" skipped: maximum number of
    running instances reached`, whose kind is told by its trigger's interval. Other skip lines
    take the first "sync" or "sweep" word they contain."""

    def __init__(self, path: Path, triggers: dict[str, str]) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""
        # trigger text -> kind, unless both jobs share one interval (then it cannot tell)
        self.triggers = triggers if len(set(triggers)) == len(triggers) else {}

    def _kind(self, trig: str, line: str) -> str:
        kind = self.triggers.get(trig.strip())
        if kind:
            return kind
        return first_kind(line)

    def read(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        try:
            with self.path.open("r", errors="replace") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except OSError:
            return counts
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()  # an unfinished last line waits for the next read
        for line in lines:
            key = None
            if m := SKIP_LINE.search(line):
                key = f"{m.group(1)}_skipped"
            elif m := APS_SKIP.search(line):
                key = f"{self._kind(m.group(1), line)}_skipped"
            elif m := APS_MISSED.search(line):
                key = f"{self._kind(m.group(1), line)}_missed"
            elif "skipped" in line:
                key = f"{first_kind(line)}_skipped"
            elif " ERROR " in line or " CRITICAL " in line or "Traceback" in line:
                key = "errors"
            if key:
                counts[key] = counts.get(key, 0) + 1
        return counts


METRIC = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def counters(port: int) -> dict[str, float] | None:
    """The daemon's run counters, summed over sources, or None if the endpoint is unreachable:
    `runs/KIND/OUTCOME` from tasksync_runs_total and, where the daemon has it,
    `overlapped/KIND` from tasksync_ticks_overlapped_total (ticks dropped or deferred because
    a run of the source was still going)."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    out: dict[str, float] = {}
    # A labelled counter shows no samples until first used: 0 if the family is declared.
    if re.search(r"^# TYPE tasksync_ticks_overlapped(_total)? counter", text, re.M):
        out.update({"overlapped/sync": 0.0, "overlapped/sweep": 0.0})
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(2)))
        if m.group(1) == "tasksync_runs_total":
            key = f"runs/{labels.get('kind')}/{labels.get('outcome')}"
        elif m.group(1) == "tasksync_ticks_overlapped_total":
            key = f"overlapped/{labels.get('kind')}"
        else:
            continue
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


class RssSampler:
    """The daemon's tree RSS every second, handed out per sample window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(1.0):
            if rss_kb(self.pid):
                mb = tree_rss_mb(self.pid)
                with self.lock:
                    self.samples.append(mb)

    def take(self) -> list[float]:
        with self.lock:
            out, self.samples = self.samples, []
        return out

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


# ---- one run -------------------------------------------------------------------------------------
def write_config(
    path: Path, db_url: str, sim_url: str, args: argparse.Namespace, port: int
) -> None:
    q = json.dumps  # a JSON string is a valid TOML basic string
    path.write_text(
        f"[database]\nurl = {q(db_url)}\n\n"
        f"[[sources]]\nname = {q(SOURCE)}\nbase_url = {q(sim_url)}\n"
        "max_requests_per_second = 1000\n\n"
        f"[schedule]\nevery = {q(args.every)}\nsweep_every = {q(args.sweep_every)}\n\n"
        f'[metrics]\nport = {port}\nhost = "127.0.0.1"\n'
    )


def interval_text(every: str) -> str:
    """How APScheduler prints an interval trigger of `every` ("30s", "5m", "1h") in its log."""
    m = re.fullmatch(r"\s*(\d+)\s*([smh])\s*", every)
    if not m:
        return every  # the daemon will say what is wrong with it
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
    return f"interval[{timedelta(seconds=seconds)}]"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def sample(
    minute: float,
    archive: Archive,
    sim: SimProcess,
    daemon: subprocess.Popen[bytes],
    rss: RssSampler,
    logs: LogWatch,
    metrics_port: int,
    prev_metric: dict[str, float],
) -> dict[str, Any]:
    """One row: what happened since the previous sample, and the state now."""
    runs = archive.new_runs()
    syncs = [r for r in runs if r["kind"] == "sync"]
    ok = [r for r in syncs if r["outcome"] == "ok"]
    sweeps = [r for r in runs if r["kind"] == "sweep"]
    counts = logs.read()
    metric = counters(metrics_port)

    def delta(key: str) -> int | None:
        """The counter's increase in this window; None when the daemon has no such counter."""
        if metric is None or (key not in metric and not key.startswith("runs/")):
            return None
        return int(metric.get(key, 0.0) - prev_metric.get(key, 0.0))

    window = {
        "sweeps_skipped_metric": delta("runs/sweep/skipped"),
        "syncs_skipped_metric": delta("runs/sync/skipped"),
        "sweep_ticks_overlapped": delta("overlapped/sweep"),
        "sync_ticks_overlapped": delta("overlapped/sync"),
    }
    if metric is not None:
        prev_metric.clear()
        prev_metric.update(metric)
    window_rss = rss.take()
    now_rss = tree_rss_mb(daemon.pid) if daemon.poll() is None else 0.0
    server = sim.stats() or {}
    return {
        "minute": round(minute, 2),
        "utc": datetime.now(UTC).strftime("%H:%M:%S"),
        "syncs": len(syncs),
        "syncs_failed": len(syncs) - len(ok),
        "sync_p50_s": median([r["duration_s"] for r in ok if r["duration_s"] is not None]),
        "requests_p50": median([r["requests"] for r in ok]),
        "requests_max": max((r["requests"] for r in ok), default=None),
        "sweeps_ok": sum(r["outcome"] == "ok" for r in sweeps),
        "sweeps_failed": sum(r["outcome"] != "ok" for r in sweeps),
        "sweep_max_s": max((r["duration_s"] or 0.0 for r in sweeps), default=None),
        "sweeps_skipped_log": counts.get("sweep_skipped", 0),
        "syncs_skipped_log": counts.get("sync_skipped", 0),
        **window,
        "missed_log": counts.get("sync_missed", 0)
        + counts.get("sweep_missed", 0)
        + counts.get("unknown_missed", 0),
        "unknown_skipped_log": counts.get("unknown_skipped", 0),
        "error_lines": counts.get("errors", 0),
        "rss_mb": round(now_rss, 1),
        "rss_p50_mb": round(median(window_rss) or now_rss, 1),
        "rss_max_mb": round(max(window_rss, default=now_rss), 1),
        "sim_rss_mb": round(rss_kb(sim.proc.pid) / 1024, 1),
        "archive_mb": round(archive.size_mb(), 1),
        "archive_wal_mb": None if (wal := archive.wal_mb()) is None else round(wal, 1),
        **archive.counts(),
        "listed": server.get("listed"),
        "sim_pending": server.get("pending"),
        "sim_stuck": server.get("stuck"),
        "sim_unfinished": (server["pending"] + server["stuck"] if "pending" in server else None),
        "sync_durations_s": [r["duration_s"] for r in ok],
        "sync_requests": [r["requests"] for r in ok],
    }


def stop_daemon(daemon: subprocess.Popen[bytes], grace_s: float) -> dict[str, Any]:
    """SIGTERM, wait for the exit; SIGKILL the group if it hangs; report leftovers."""
    out: dict[str, Any] = {}
    if daemon.poll() is None:
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            out["killed"] = True
            kill_group(daemon)
        out["stop_s"] = round(time.monotonic() - t0, 2)
    out["exit_code"] = daemon.returncode
    if group_alive(daemon.pid):  # e.g. a fetch process that outlived the daemon
        out["leftovers"] = True
        kill_group(daemon)
    return out


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = [
    # header, key, format, width
    ("min", "minute", ".1f", 5),
    ("syncs", "syncs", "d", 5),
    ("fail", "syncs_failed", "d", 4),
    ("sync p50 s", "sync_p50_s", ".3f", 10),
    ("req p50", "requests_p50", ".0f", 7),
    ("req max", "requests_max", "d", 7),
    ("sweeps", "sweeps_ok", "d", 6),
    ("sw fail", "sweeps_failed", "d", 7),
    ("sw max s", "sweep_max_s", ".1f", 8),
    ("sw skip log", "sweeps_skipped_log", "d", 11),
    ("sw skip metric", "sweeps_skipped_metric", "d", 14),
    ("sw ovl", "sweep_ticks_overlapped", "d", 6),
    ("sy ovl", "sync_ticks_overlapped", "d", 6),
    ("RSS MB", "rss_p50_mb", ".0f", 6),
    ("peak", "rss_max_mb", ".0f", 5),
    ("sim MB", "sim_rss_mb", ".0f", 6),
    ("db MB", "archive_mb", ".1f", 7),
    ("tasks", "tasks", "d", 7),
    ("gone", "gone", "d", 6),
    ("unfin", "unfinished", "d", 6),
    ("listed", "listed", "d", 6),
    ("srv unfin", "sim_unfinished", "d", 9),
]


def print_table(rows: list[dict[str, Any]]) -> None:
    print("  ".join(h.rjust(w) for h, _, _, w in COLUMNS))
    for r in rows:
        print("  ".join(fmt(r.get(k), f).rjust(w) for _, k, f, w in COLUMNS))
    print(
        "(syncs, req: sync runs finished in the window, medians over the ok ones; sweeps: ok "
        "ones; sw skip: skipped sweeps counted in the log / by tasksync_runs_total; sw ovl, sy "
        "ovl: ticks that came while a run was going (tasksync_ticks_overlapped_total, where the "
        "daemon has it); RSS: median and peak "
        "of 1 s samples of the daemon and its children; unfin: archived unfinished tasks not "
        "gone (what each sync re-checks); listed, srv unfin: what the server lists, and how "
        "many of those are unfinished)"
    )


def summarize(rows: list[dict[str, Any]], warmup: float, end: float, notes: dict[str, Any]) -> None:
    first = [r for r in rows if warmup < r["minute"] <= warmup + WINDOW_MIN]
    last = [r for r in rows if r["minute"] > end - WINDOW_MIN]
    if not first:
        first = [r for r in rows if r["minute"] > warmup][:1]
    print()
    if not first or not last:
        print("no rows after the warm-up: nothing to compare")
    else:
        print(
            f"first window: minutes {first[0]['minute']}..{first[-1]['minute']} "
            f"(after a {warmup:g}-minute warm-up); last window: minutes "
            f"{last[0]['minute']}..{last[-1]['minute']}"
        )
        if warmup + WINDOW_MIN > end - WINDOW_MIN:
            print(
                f"  (the windows overlap: run at least {warmup + 2 * WINDOW_MIN:g} minutes "
                "for a meaningful comparison)"
            )

        def pooled(rs: list[dict[str, Any]], key: str) -> float | None:
            return median([v for r in rs for v in r[key] if v is not None])

        def rss(rs: list[dict[str, Any]]) -> float | None:
            return median([r["rss_p50_mb"] for r in rs if r["rss_p50_mb"]])

        durations = (pooled(first, "sync_durations_s"), pooled(last, "sync_durations_s"))
        requests = (pooled(first, "sync_requests"), pooled(last, "sync_requests"))
        checks = [
            ("sync duration median (s)", *durations, ".3f"),
            ("sync requests median", *requests, ".1f"),
            ("daemon RSS median (MB)", rss(first), rss(last), ".0f"),
        ]
        srv = (
            median([r["sim_unfinished"] for r in first if r["sim_unfinished"] is not None]),
            median([r["sim_unfinished"] for r in last if r["sim_unfinished"] is not None]),
        )
        for label, a, b, spec in checks:
            if a is None or b is None or a == 0:
                print(f"  {label:<26} first {fmt(a, spec):>8}  last {fmt(b, spec):>8}  n/a")
                continue
            ratio = b / a
            verdict = "PASS" if abs(ratio - 1) <= TOLERANCE else "FAIL"
            print(
                f"  {label:<26} first {a:>8{spec}}  last {b:>8{spec}}  last/first {ratio:5.2f}"
                f"  {verdict} (within {TOLERANCE:.0%})"
            )
        print(
            f"  (the server's own unfinished tasks, which each sync re-checks: first "
            f"{fmt(srv[0], '.0f')}, last {fmt(srv[1], '.0f')})"
        )

    def t(key: str) -> int:
        return sum(r[key] or 0 for r in rows)

    def m(key: str) -> str:  # a metric's total, or "-" if the daemon never served it
        return str(t(key)) if any(r[key] is not None for r in rows) else "-"

    print(
        f"sweeps: {t('sweeps_ok')} ok, {t('sweeps_failed')} failed or interrupted, skipped "
        f"{t('sweeps_skipped_log')} (log lines) / {m('sweeps_skipped_metric')} (metric), "
        f"ticks overlapped {m('sweep_ticks_overlapped')}; syncs: {t('syncs')} finished, "
        f"{t('syncs_failed')} not ok, skipped {t('syncs_skipped_log')} (log lines) / "
        f"{m('syncs_skipped_metric')} (metric), ticks overlapped {m('sync_ticks_overlapped')}; "
        f"misfires {t('missed_log')}, unclassified skip lines {t('unknown_skipped_log')}, "
        f"error lines {t('error_lines')}"
    )
    if rows:
        r = rows[-1]
        print(
            f"at the end: the server lists {fmt(r['listed'], 'd')} tasks "
            f"({fmt(r['sim_stuck'], 'd')} stuck); the archive holds {r['tasks']} "
            f"({r['gone']} gone, {r['unfinished']} unfinished and not gone), "
            f"{r['archive_mb']} MB"
        )
    stop = notes.get("daemon", {})
    print(
        f"daemon: exit code {stop.get('exit_code')} after SIGTERM"
        + (f" ({stop['stop_s']} s)" if "stop_s" in stop else "")
        + ("; had to be killed" if stop.get("killed") else "")
        + ("; left processes behind (killed)" if stop.get("leftovers") else "; no leftovers")
        + (f"; died early at minute {notes['died_at']}" if "died_at" in notes else "")
    )


def interrupt(_signum: int, _frame: Any) -> None:
    """SIGINT and SIGTERM unwind through the cleanup in main. (Installed explicitly: a shell
    starts background jobs with SIGINT ignored, and Python then would not raise.)"""
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--sample-s", type=float, default=60.0)
    ap.add_argument("--warmup-min", type=float, default=2.0)
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--arrivals-per-s", type=float, default=20.0)
    ap.add_argument("--updates-per-s", type=float, default=100.0)
    ap.add_argument("--ttl-s", type=float, default=1000.0)
    ap.add_argument("--stuck-share", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--every", default="1s", help="[schedule] every (syncs)")
    ap.add_argument("--sweep-every", default="30s", help="[schedule] sweep_every")
    ap.add_argument("--json", type=Path, help="write the rows to this file")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite archive in the temp dir")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tasksync-soak-"))
    log_path = tmp / "daemon.log"
    print(f"temp dir {tmp}; daemon log {log_path}", flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    params = {
        "tasks": args.tasks,
        "seed": args.seed,
        "arrivals_per_s": args.arrivals_per_s,
        "updates_per_s": args.updates_per_s,
        "ttl_s": args.ttl_s,
        "stuck_share": args.stuck_share,
    }
    if args.arrivals_per_s > 0:  # ids that tell the submit time, a clock that keeps wall time
        params["gap_ms"] = max(1, int(800 / args.arrivals_per_s))
    # A task needs ~4.1 updates to finish (SUBMITTED, IN_PROGRESS 15 %, 45 %, 75 %, done; a
    # MODAL one, 1 in 9, one more). With fewer, the server's own unfinished set grows for
    # about ttl-s, and with it what each sync must re-check: not the daemon's doing.
    needed = 4.1 * args.arrivals_per_s * (1 - args.stuck_share)
    if args.updates_per_s < needed:
        print(
            f"note: --updates-per-s {args.updates_per_s:g} is below the ~{needed:.0f}/s that "
            f"finishing {args.arrivals_per_s * (1 - args.stuck_share):g} arrivals/s takes: the "
            "server's unfinished tasks (srv unfin) will grow for about --ttl-s, and sync "
            f"requests with them; use --updates-per-s {math.ceil(needed / 10) * 10 + 20} or "
            "more for a server that is steady from the start",
            flush=True,
        )
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    sim: SimProcess | None = None
    archive: Archive | None = None
    daemon: subprocess.Popen[bytes] | None = None
    rss: RssSampler | None = None
    interrupted = False
    try:
        sim = SimProcess(params, tmp / "simulator.log")
        archive = Archive(args.db, tmp)
        metrics_port = free_port()
        cfg = tmp / "tasksync.toml"
        write_config(cfg, archive.url, sim.url, args, metrics_port)
        run = [sys.executable, "-m", "sync", "--config", str(cfg)]
        up = subprocess.run(
            [*run, "db", "upgrade"], cwd=tmp, env=child_env(), capture_output=True, text=True
        )
        if up.returncode != 0:
            raise RuntimeError(f"tasksync db upgrade failed: {up.stderr.strip()[-500:]}")
        archive.open()
        if archive.autovacuum() == "off":
            notes["autovacuum"] = "off"
            print(
                "note: autovacuum is off on this PostgreSQL server: the dead row versions that "
                "runs leave (a sweep updates every present task) are never reclaimed, so the "
                "archive's size, and sync times with it, grow for that reason too",
                flush=True,
            )
        triggers = {interval_text(args.every): "sync", interval_text(args.sweep_every): "sweep"}
        logs = LogWatch(log_path, triggers)
        print(
            f"simulator {sim.url}: {args.tasks:,} tasks, {args.arrivals_per_s:g} arrivals/s, "
            f"{args.updates_per_s:g} updates/s, ttl {args.ttl_s:g} s, stuck "
            f"{args.stuck_share:.0%}; archive {args.db}; sync every {args.every}, sweep every "
            f"{args.sweep_every}; {args.minutes:g} minutes, a row every {args.sample_s:g} s",
            flush=True,
        )
        with log_path.open("wb") as log_file:
            daemon = subprocess.Popen(
                [*run, "run"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                env=child_env(),
                start_new_session=True,
            )
        rss = RssSampler(daemon.pid)
        prev_metric: dict[str, float] = {}
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        for k in range(1, math.ceil(args.minutes * 60 / args.sample_s - 1e-9) + 1):
            due = min(t0 + k * args.sample_s, end)
            while time.monotonic() < due and daemon.poll() is None:
                time.sleep(min(1.0, max(0.0, due - time.monotonic())))
            minute = (time.monotonic() - t0) / 60
            row = sample(minute, archive, sim, daemon, rss, logs, metrics_port, prev_metric)
            rows.append(row)
            print(
                f"  minute {row['minute']:5.1f}: {row['syncs']} syncs (p50 "
                f"{fmt(row['sync_p50_s'], '.3f')} s, {fmt(row['requests_p50'], '.0f')} requests), "
                f"{row['sweeps_ok']} sweeps, {row['sweeps_skipped_log']} skipped; RSS "
                f"{row['rss_p50_mb']:.0f} MB; archive {row['tasks']:,} tasks, "
                f"{row['archive_mb']} MB",
                flush=True,
            )
            if daemon.poll() is not None:
                notes["died_at"] = row["minute"]
                print(f"the daemon exited early (code {daemon.returncode}); see {log_path}")
                break
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the daemon and the simulator", flush=True)
    finally:
        # The cleanup is bounded (the daemon's grace, then SIGKILL): a second Ctrl-C must not
        # cut it short and leave processes or a database behind.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if rss is not None:
            rss.stop()
        if daemon is not None:
            notes["daemon"] = stop_daemon(daemon, grace_s=45)
        if sim is not None:
            sim.stop()
        if archive is not None:
            archive.drop(keep=args.keep)
        if not args.keep:
            shutil.rmtree(tmp / "__pycache__", ignore_errors=True)
    if rows:
        print()
        print_table(rows)
        summarize(rows, args.warmup_min, rows[-1]["minute"], notes)
    if args.json:
        doc = {"args": vars(args), "rows": rows, "notes": notes}
        args.json.write_text(json.dumps(doc, indent=1, default=str))
        print(f"rows written to {args.json}")
    print(f"daemon log: {log_path}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
