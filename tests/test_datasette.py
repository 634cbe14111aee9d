"""The archive in Datasette: `tasksync report --datasette-metadata` gives titles, descriptions
and canned queries; a real Datasette serves a simulator archive and its views through its
JSON API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from sync.archive.store import Store
from sync.simulator import Simulator

from .helpers import LAUNCHED, Run, migrated


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_datasette_serves_the_archive_and_its_views(run: Run, tmp_path: Path) -> None:
    pytest.importorskip("datasette")
    db = tmp_path / "archive.db"
    store: Store = migrated(f"sqlite:///{db}")
    sim = Simulator(1_500, seed=11, gap_ms=3_600_000)
    store.save(store.prepare("main", [sim.task(i) for i in sim.alive], datetime.now(UTC)), None)
    store.dispose()
    code, out, err = run("--db", f"sqlite:///{db}", "report", "--datasette-metadata")
    assert code == 0, err
    meta = json.loads(out)
    assert set(meta["databases"]) == {"archive"}
    (tmp_path / "metadata.json").write_text(out)
    port = free_port()
    meta_file = str(tmp_path / "metadata.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "datasette", "serve", str(db), "--port", str(port), "-m", meta_file],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    LAUNCHED.append(proc)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/-/versions.json", timeout=1)
            break
        except httpx.TransportError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "datasette did not start"
            time.sleep(0.1)
    stats = httpx.get(f"{base}/archive/daily_stats.json?_shape=array&_size=max").json()
    assert sum(row["tasks"] for row in stats) == 1_500
    assert {"day", "action", "succeeded", "failed", "avg_run_ms"} <= set(stats[0])
    rate = httpx.get(f"{base}/archive/failure_rate_by_day.json?_shape=array").json()
    assert len(rate) == len({row["day"] for row in stats})
    tid = sim.task_id(sim.alive[0])
    history = httpx.get(f"{base}/archive/task_history.json?_shape=array&task_id={tid}").json()
    assert [h["kind"] for h in history] == ["created"]
    served = httpx.get(f"{base}/-/metadata.json").json()
    assert served["title"] == "tasksync archive"
    tables = httpx.get(f"{base}/archive.json").json()["tables"]
    hidden = {t["name"] for t in tables if t["hidden"]}
    assert {"alembic_version", "sync_leases"} <= hidden and "tasks" not in hidden
