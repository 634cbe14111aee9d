"""No secret leaks: a canary token (and database password) is run through every command and
every output path, and then looked for everywhere: stdout, stderr, text and JSON logs, `-v`
tracebacks, `config check`, `status`, the daemon's log and every table of the archive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from sqlalchemy import inspect, text

from sync.simulator import Reply, Simulator, SimulatorServer
from sync.store import Store

from .conftest import fresh_database

ROOT = Path(__file__).parent.parent
CANARY = "CANARY7f3a9Zq"

COMMANDS = [
    ["db", "upgrade"],
    ["db", "current"],
    ["db", "check"],
    ["config", "check"],
    ["backfill"],
    ["sync"],
    ["sync", "--dry-run"],
    ["sync", "--sweep"],
    ["status"],
    ["query", "SELECT * FROM sync_runs"],
]
FLAGS = [[], ["-v"], ["-vv"], ["--log-format", "json"], ["-v", "--log-format", "json"]]


def tasksync(cfg: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=cfg.parent,
        timeout=120,
    )


def write_config(path: Path, base_url: str, db: str, token_line: str, extra: str = "") -> Path:
    path.write_text(
        f'[database]\nurl = "{db}"\n\n[[sources]]\nname = "main"\nbase_url = """{base_url}"""\n'
        f"{token_line}\nmax_requests_per_second = 500\nretry_attempts = 3\nretry_budget_s = 0.5\n"
        f'timeout_s = 5\n\n[schedule]\nevery = "1s"\nsweep_every = "2s"\n{extra}'
    )
    return path


def dump_tables(url: str) -> str:
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            names = inspect(conn).get_table_names() + inspect(conn).get_view_names()
            return "\n".join(str(conn.execute(text(f"SELECT * FROM {n}")).all()) for n in names)
    finally:
        store.dispose()


def echoing(sim: Simulator, every: list[int]) -> Callable[..., Reply]:
    """The simulator's handler, changed to quote the token back: in a 401's body, and every
    `every[0]`-th request in a `success: false` refusal with newlines and escape codes."""
    real = sim.handle

    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        sent = {k.lower(): v for k, v in headers.items()}.get("mj-api-secret", "")
        reply = real(method, path, headers, body)
        if reply.status == 401:
            return Reply(401, f"bad token {sent}".encode(), "text/plain")
        if sim.requests % every[0] == 0:
            doc = {"success": False, "code": 1, "message": f"token {sent} throttled\n\x1b[2J"}
            return Reply(200, orjson.dumps(doc))
        return reply

    return handle


@pytest.mark.slow
@pytest.mark.postgresql
def test_canary_token_echoed_by_the_server_appears_nowhere(tmp_path: Path) -> None:
    """A server that quotes the token back in refusals and 401 bodies; every command (each
    with one of the log flag sets), a daemon run, a failing run under every flag set, a wrong
    token: the token and the database password appear in no output and no table."""
    password = "PWcanary55x"
    with fresh_database("postgresql", tmp_path) as url:
        db = url.replace("postgres@", f"postgres:{password}@")
        sim = Simulator(400, token=CANARY, arrivals_per_request=0.5)
        every = [4]
        sim.handle = echoing(sim, every)  # type: ignore[method-assign]
        outputs: list[str] = []
        with SimulatorServer(sim) as server:
            cfg = write_config(tmp_path / "t.toml", server.url, db, 'token_env = "MJ_CANARY"')
            env = {"MJ_CANARY": CANARY}
            for n, args in enumerate(COMMANDS):  # each command with one of the flag sets
                flags = FLAGS[n % len(FLAGS)]
                proc = tasksync(cfg, *flags, *args, env=env)
                outputs.append(proc.stdout + proc.stderr)
                assert proc.returncode == 0, (args, flags, proc.stderr[-500:])
            log = tmp_path / "daemon.log"
            with log.open("w") as out:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "sync", "--config", str(cfg), "-vv", "run"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                    cwd=tmp_path,
                )
            time.sleep(4)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
            outputs.append(log.read_text())
            every[0] = 1  # now every request is refused: the run fails quoting the server
            for flags in FLAGS:
                refused = tasksync(cfg, *flags, "sync", env=env)
                assert refused.returncode == 1 and "throttled" in refused.stderr
                outputs.append(refused.stdout + refused.stderr)
            wrong = tasksync(cfg, "-v", "backfill", env={"MJ_CANARY": "wrong-" + CANARY})
            assert wrong.returncode == 2 and "refused the token" in wrong.stderr
            outputs.append(wrong.stdout + wrong.stderr)
        blob = "\n".join(outputs)
        assert "throttled" in blob and "***" in blob  # the echo happened, and was scrubbed
        assert "\x1b" not in blob
        assert CANARY not in blob and password not in blob
        tables = dump_tables(url)
        assert "throttled" in tables  # the failed run's error is recorded, token scrubbed
        assert CANARY not in tables and password not in tables


@pytest.mark.parametrize(
    "where",
    ["token-file-two-lines", "token-file-second-line", "base-url-userinfo", "base-url-query"],
)
def test_canary_in_a_bad_place_is_refused_without_being_shown(
    tmp_path: Path, where: str, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    """The token in a two-line token file or in the base URL: every command stops with exit 2
    naming the file or key, and the canary is in no output, log format or verbosity."""
    token_line, base = 'token_env = "UNUSED"', "http://127.0.0.1:9"
    secret_file = tmp_path / "token"
    if where == "token-file-two-lines":
        secret_file.write_text(f"{CANARY}\n{CANARY}-again\n")
        token_line = f'token_file = "{secret_file}"'
    elif where == "token-file-second-line":
        secret_file.write_text(f"first\n{CANARY}\n")
        token_line = f'token_file = "{secret_file}"'
    elif where == "base-url-userinfo":
        base = f"http://admin:{CANARY}@127.0.0.1:9"
    else:
        base = f"http://127.0.0.1:9/?key={CANARY}"
    cfg = write_config(tmp_path / "t.toml", base, f"sqlite:///{tmp_path}/a.db", token_line)
    seen: list[str] = []
    for args in [*COMMANDS, ["run"]]:
        for flags in FLAGS:
            code, out, err = run_cli("--config", str(cfg), *flags, *args)
            seen.append(out + err)
            assert code == 2, (args, flags, err)
    blob = "\n".join(seen)
    assert CANARY not in blob
    assert ("token_file" if "token" in where else "base_url") in blob


@pytest.fixture
def run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., tuple[int, str, str]]:
    """`tasksync ARGS` in-process: (exit code, stdout, stderr)."""
    from sync.cli import main

    monkeypatch.chdir(tmp_path)

    def go(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return go
