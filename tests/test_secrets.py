"""No secret leaks: a canary token (and database password) is run through every command and
every output path, and then looked for everywhere: stdout, stderr, text and JSON logs, `-v`
tracebacks, `config check`, `status`, the daemon's log and every table of the archive."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import inspect, text

from sync.archive.store import Store
from sync.simulator import Reply, Simulator, SimulatorServer

from .helpers import Run, fresh_database, tasksync, write_config

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
# Every config here: quick retries, and a daemon that syncs every second and sweeps every two.
LIMITS: dict[str, Any] = {
    "max_requests_per_second": 500,
    "retry_attempts": 3,
    "retry_budget_s": 0.5,
    "timeout_s": 5,
}
SCHEDULE = {"every": "1s", "sweep_every": "2s"}


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
            cfg = write_config(
                tmp_path / "t.toml",
                db,
                server.url,
                schedule=SCHEDULE,
                token_env="MJ_CANARY",
                **LIMITS,
            )
            env = {"MJ_CANARY": CANARY}
            for n, args in enumerate(COMMANDS):  # each command with one of the flag sets
                flags = FLAGS[n % len(FLAGS)]
                proc = tasksync("--config", str(cfg), *flags, *args, cwd=tmp_path, env=env)
                out, err = proc.communicate(timeout=120)
                outputs.append(out + err)
                assert proc.returncode == 0, (args, flags, err[-500:])
            log = tmp_path / "daemon.log"
            daemon = tasksync("--config", str(cfg), "-vv", "run", cwd=tmp_path, env=env, log=log)
            time.sleep(4)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
            outputs.append(log.read_text())
            every[0] = 1  # now every request is refused: the run fails quoting the server
            for flags in FLAGS:
                refused = tasksync("--config", str(cfg), *flags, "sync", cwd=tmp_path, env=env)
                out, err = refused.communicate(timeout=120)
                assert refused.returncode == 1 and "throttled" in err
                outputs.append(out + err)
            wrong = tasksync(
                "--config",
                str(cfg),
                "-v",
                "backfill",
                cwd=tmp_path,
                env={"MJ_CANARY": "wrong-" + CANARY},
            )
            out, err = wrong.communicate(timeout=120)
            assert wrong.returncode == 2 and "refused the token" in err
            outputs.append(out + err)
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
    tmp_path: Path, where: str, run: Run
) -> None:
    """The token in a two-line token file or in the base URL: every command stops with exit 2
    naming the file or key, and the canary is in no output, log format or verbosity."""
    token: dict[str, Any] = {"token_env": "UNUSED"}
    base = "http://127.0.0.1:9"
    secret_file = tmp_path / "token"
    if where == "token-file-two-lines":
        secret_file.write_text(f"{CANARY}\n{CANARY}-again\n")
        token = {"token_file": secret_file}
    elif where == "token-file-second-line":
        secret_file.write_text(f"first\n{CANARY}\n")
        token = {"token_file": secret_file}
    elif where == "base-url-userinfo":
        base = f"http://admin:{CANARY}@127.0.0.1:9"
    else:
        base = f"http://127.0.0.1:9/?key={CANARY}"
    cfg = write_config(
        tmp_path / "t.toml",
        f"sqlite:///{tmp_path}/a.db",
        base,
        schedule=SCHEDULE,
        **token,
        **LIMITS,
    )
    seen: list[str] = []
    for args in [*COMMANDS, ["run"]]:
        for flags in FLAGS:
            code, out, err = run("--config", str(cfg), *flags, *args)
            seen.append(out + err)
            assert code == 2, (args, flags, err)
    blob = "\n".join(seen)
    assert CANARY not in blob
    assert ("token_file" if "token" in where else "base_url") in blob
