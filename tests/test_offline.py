"""The suite itself: no test reaches past loopback, in the test process or in the tasksync
processes tests start (tests/offline/sitecustomize.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .helpers import tasksync, write_config


def test_no_name_is_looked_up_and_no_address_is_reached_past_loopback() -> None:
    with pytest.raises(socket.gaierror, match="offline"):
        socket.getaddrinfo("cdn.example.com", 443)
    with pytest.raises(OSError, match="offline"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
    assert socket.getaddrinfo("localhost", 80)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=1).close()


def test_a_tasksync_process_a_test_starts_is_offline_too(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    cfg = write_config(tmp_path / "c.toml", db, "http://example.com", retry_attempts=1)
    assert tasksync("--config", str(cfg), "db", "upgrade", cwd=tmp_path).wait(timeout=60) == 0
    proc = tasksync("--config", str(cfg), "sync", cwd=tmp_path)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "offline" in err, err
