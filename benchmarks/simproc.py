"""The simulator in a process of its own, on a free loopback port (for the benchmarks)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_simulator(tasks: int, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    """`tasksync simulate --tasks N OPTIONS...` (seed 1 unless OPTIONS give one), once it
    accepts connections: the process and its base URL."""
    port = free_port()
    seed = [] if "--seed" in options else ["--seed", "1"]
    cmd = [sys.executable, "-m", "sync", "simulate", "--port", str(port), "--tasks", str(tasks)]
    proc = subprocess.Popen(
        [*cmd, *seed, *options], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"
