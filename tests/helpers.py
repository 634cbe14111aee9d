"""Shared test helpers, as plain functions (the fixtures are in conftest.py): a fresh database
of each backend, one config writer, one `tasksync` subprocess launcher, and comparing the
archive with the simulator's truth field by field.

Every test gets its own freshly created database (PostgreSQL, MariaDB) or file (SQLite), named
after this run so runs never meet. On a machine without PostgreSQL or MariaDB those tests skip
with the reason; under CI=true an unreachable server fails them instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import strategies as st
from sqlalchemy import func, select

from sync.archive import schema
from sync.archive.models import SyncRun, Task, TaskEvent
from sync.archive.store import Store
from sync.config import SourceSettings
from sync.server.client import BY_IDS_MAX
from sync.simulator import Simulator
from sync.tasks.records import SHAPES, Record, Rejected, build, fingerprint, join

ROOT = Path(__file__).resolve().parent.parent  # the checkout: README, examples, `-m sync`

# Databases -------------------------------------------------------------------------------

RUN = f"tsync_{os.getpid()}_{uuid.uuid4().hex[:6]}"
COUNTER = itertools.count()
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_HOST = os.environ.get("TASKSYNC_TEST_PG_HOST", "127.0.0.1")
PG_USER = os.environ.get("TASKSYNC_TEST_PG_USER", "postgres")
MY_HOST = os.environ.get("TASKSYNC_TEST_MARIADB_HOST", "127.0.0.1")
MY_USER = os.environ.get("TASKSYNC_TEST_MARIADB_USER", "root")
_reachable: dict[str, str | None] = {}

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(
        host=PG_HOST, user=PG_USER, dbname="postgres", autocommit=True, connect_timeout=3
    )


def _my_admin() -> Any:
    import pymysql

    return pymysql.connect(
        host=MY_HOST, user=MY_USER, password="", connect_timeout=3, autocommit=True
    )


def unreachable(kind: str) -> str | None:
    """Why the `kind` database server cannot be reached, or None when it can."""
    if kind == "sqlite":
        return None
    if kind not in _reachable:
        try:
            (_pg_admin if kind == "postgresql" else _my_admin)().close()
            _reachable[kind] = None
        except Exception as exc:
            _reachable[kind] = (
                f"{kind} at {PG_HOST if kind == 'postgresql' else MY_HOST} "
                f"unreachable: {str(exc).splitlines()[0]}"
            )
    return _reachable[kind]


def require(kind: str) -> None:
    """Skip the test (fail it under CI=true) when the `kind` server cannot be reached."""
    reason = unreachable(kind)
    if reason:
        if CI:
            pytest.fail(f"CI=true requires {kind}: {reason}")
        pytest.skip(reason)


@contextlib.contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A new, empty database of `kind`; dropped afterwards."""
    require(kind)
    name = f"{RUN}_{next(COUNTER)}"
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / (name + '.db')}"
        return
    if kind == "postgresql":
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}/{name}"
        finally:
            with _pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    conn = _my_admin()
    try:
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        yield f"mysql+pymysql://{MY_USER}@{MY_HOST}/{name}?charset=utf8mb4"
    finally:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def migrated(url: str) -> Store:
    """A store on `url`, migrated to head by Alembic."""
    store = Store(url)
    schema.upgrade(store)
    return store


# Sources, configs and processes ----------------------------------------------------------


def source_for(url: str, **kw: Any) -> SourceSettings:
    """A source pointed at `url` with test-friendly limits."""
    opts: dict[str, Any] = {
        "name": "main",
        "base_url": url,
        "api": "plus",
        "max_requests_per_second": 10_000,
        "timeout_s": 5,
    }
    opts.update(kw)
    return SourceSettings(**opts)


def toml_value(value: Any) -> str:
    """A TOML literal: bools, numbers, and strings (or paths) as basic strings, whose escapes
    are JSON's except that DEL must be escaped too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def write_config(
    path: Path,
    db: str,
    base_url: str,
    *,
    schedule: dict[str, Any] | None = None,
    extra: str = "",
    **source: Any,
) -> Path:
    """Write a config with `[database] url = db` and one source ("main", 1000 requests a
    second unless `source` says otherwise, then the other `source` keys), an optional
    `[schedule]` table, then `extra` verbatim."""
    keys = {
        "name": "main",
        "base_url": base_url,
        "api": "plus",
        "max_requests_per_second": 1000,
        **source,
    }
    lines = ["[database]", f"url = {toml_value(db)}", "", "[[sources]]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    if schedule is not None:
        lines += ["", "[schedule]", *(f"{k} = {toml_value(v)}" for k, v in schedule.items())]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def daemon_config(
    path: Path,
    db: str,
    base_url: str,
    *,
    every: str = "1s",
    sweep_every: str = "1h",
    extra: str = "",
    **source: Any,
) -> Path:
    """A config for `tasksync run`: a sync every `every`, quick retries and timeouts."""
    limits: dict[str, Any] = {
        "max_requests_per_second": 200,
        "retry_attempts": 2,
        "retry_budget_s": 2,
        "timeout_s": 2,
    }
    schedule = {"every": every, "sweep_every": sweep_every, "shutdown_timeout_s": 10}
    return write_config(path, db, base_url, schedule=schedule, extra=extra, **(limits | source))


LAUNCHED: list[subprocess.Popen[str]] = []  # reaped after each test by conftest.py


def tasksync(
    *args: str, cwd: Path, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    """Start `python -m sync ARGS` from this checkout in `cwd`, with `env` added to the
    environment; stdout and stderr go to `log` together when given, else to two pipes."""
    cmd = [sys.executable, "-m", "sync", *args]
    # tests/offline first: its sitecustomize keeps the child off the network (see there).
    path = os.pathsep.join([str(ROOT / "tests" / "offline"), str(ROOT)])
    full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    if log is None:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd
        )
    else:
        with log.open("w") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=full_env, cwd=cwd
            )
    LAUNCHED.append(proc)
    return proc


def stop_daemon(proc: subprocess.Popen[str], bound: float = 15) -> float:
    """SIGTERM a `tasksync run`; it must exit 0 within `bound` (+5) seconds: how long it took."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=bound + 5) == 0
    return time.monotonic() - t0


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


Run = Callable[..., tuple[int, str, str]]  # the `run` fixture: tasksync in-process


# Records and the archive -----------------------------------------------------------------


def normalize(source: str, obj: Any, shape: str = "mj") -> Record | Rejected:
    """One task object from the server as its archive row, or why it can't be stored."""
    fp = fingerprint(obj, SHAPES[shape])
    return fp if isinstance(fp, Rejected) else build(source, fp, SHAPES[shape])


def request_bound(new: int, unfinished: int, page_size: int) -> int:
    """The most requests an incremental sync may make: ceil(new / page_size) pages of new
    tasks, ceil(unfinished / 100) by-id batches, plus 2."""
    return math.ceil(new / page_size) + math.ceil(unfinished / BY_IDS_MAX) + 2


COMPARED = [
    c.name
    for c in Task.__table__.columns
    if c.name not in ("first_seen_at", "last_seen_at", "last_changed_at", "gone_at")
]


def archive(store: Store, source: str = "main") -> dict[str, dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(Task).where(Task.source == source).with_only_columns(*Task.__table__.c)
        ).mappings()
        return {r["id"]: {**r, "json": join(r)} for r in rows}


def assert_archive_equals_truth(store: Store, sim: Simulator, source: str = "main") -> None:
    """Every listed task is archived with exactly the expected columns; nothing else present."""
    truth = sim.truth()
    got = archive(store, source)
    present = {tid for tid, row in got.items() if row["gone_at"] is None}
    assert present == set(truth), (
        f"missing {sorted(set(truth) - present)[:5]}, extra {sorted(present - set(truth))[:5]}"
    )
    for tid, task in truth.items():
        expected = normalize(source, task, sim.api.shape)
        assert not hasattr(expected, "reason"), expected
        row = got[tid]
        for col in COMPARED:
            assert row[col] == expected.row[col], (tid, col, row[col], expected.row[col])  # type: ignore[union-attr]
        assert same_json(row["json"], fingerprint(task, SHAPES[sim.api.shape]).raw), tid  # type: ignore[union-attr]


def same_json(a: Any, b: Any) -> bool:
    """The same JSON value, type for type and key for key (key order aside)."""
    return bool(
        orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)
    )


def count(store: Store, model: Any, **where: Any) -> int:
    q = select(func.count()).select_from(model)
    for k, v in where.items():
        q = q.where(getattr(model, k) == v)
    with store.engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def events(store: Store, task_id: str) -> list[tuple[str, str | None, str | None]]:
    q = (
        select(TaskEvent.kind, TaskEvent.previous_status, TaskEvent.status)
        .where(TaskEvent.task_id == task_id)
        .order_by(TaskEvent.id)
    )
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q)]  # type: ignore[misc]


def last_run(store: Store) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = conn.execute(select(*SyncRun.__table__.c).order_by(SyncRun.id.desc())).mappings()
        return dict(row.first() or {})


# The simulator changing between requests -------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["arrive", "remove", "expire", "advance", "none"]),
        st.integers(1, 12),
        st.integers(0, 10**6),
    ),
    max_size=60,
)


def apply(sim: Simulator, op: tuple[str, int, int]) -> None:
    """Apply one of OPS to the simulator: tasks arrive, are removed, expire or advance."""
    kind, n, pick = op
    if kind == "arrive":
        sim.arrive(n)
    elif kind == "expire":
        sim.expire(min(n, 3))
    elif kind == "remove" and sim.alive:
        for k in range(min(n, 4)):
            if sim.alive:
                sim.remove(sim.alive[(pick + k * 7919) % len(sim.alive)])
    elif kind == "advance" and sim.alive:
        sim.advance(sim.alive[pick % len(sim.alive)])


# Servers ---------------------------------------------------------------------------------


def sim_transport(sim: Simulator) -> Any:
    """An httpx MockTransport that answers from the simulator in-process (no sockets)."""
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode("ascii")
        reply = sim.handle(request.method, target, dict(request.headers), request.content)
        if reply.drop:
            raise httpx.RemoteProtocolError("server closed the connection", request=request)
        headers = {"Content-Type": reply.content_type, **reply.headers}
        return httpx.Response(reply.status, content=reply.body, headers=headers)

    return httpx.MockTransport(handler)


class TcpProxy:
    """A loopback TCP proxy the tests can cut, to play a database going away and coming back."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        import socket

        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server: Any = None
        self.conns: list[Any] = []

    def start(self) -> TcpProxy:
        import socket
        import threading

        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen(64)
        server = self.server

        def pump(a: Any, b: Any) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.close()

        def accept() -> None:
            while True:
                try:
                    client, _ = server.accept()
                except OSError:
                    return
                if self.server is not server:  # accepted from the backlog after stop()
                    client.close()
                    return
                try:
                    upstream = socket.create_connection(self.target)
                except OSError:
                    client.close()
                    continue
                self.conns += [client, upstream]
                threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        import socket

        if self.server is not None:
            self.server.close()
            self.server = None
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.conns.clear()


class HostileServer:
    """A raw HTTP/1.1 server on loopback whose replies a test scripts byte by byte: `respond`
    gets (method, path, headers, body) and returns the chunks to send, each with a delay
    before it. It can trickle, lie about lengths, send bombs, or never end."""

    def __init__(self, respond: Any) -> None:
        import socket
        import threading

        self.respond = respond
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        import time

        with contextlib.suppress(OSError), conn:
            f = conn.makefile("rb")
            while not self.stopping:
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := f.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = f.read(int(headers.get("content-length") or 0))
                self.requests.append((method, path, headers, body))
                for delay, chunk in self.respond(method, path, headers, body):
                    if self.stopping:
                        return
                    if delay:
                        time.sleep(delay)
                    conn.sendall(chunk)

    def close(self) -> None:
        self.stopping = True
        self.sock.close()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_reply(
    body: bytes, status: str = "200 OK", ctype: str = "application/json", **headers: str
) -> bytes:
    """A whole HTTP/1.1 reply with a Content-Length (unless headers give one)."""
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    length = "" if "content_length" in headers else f"Content-Length: {len(body)}\r\n"
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{length}{extra}\r\n"
    return head.encode("latin-1") + body


def spring_page(tasks: list[Any], number: int, total: int, last: bool) -> bytes:
    import orjson

    return orjson.dumps(
        {"content": tasks, "number": number, "totalElements": total, "last": last, "size": 100}
    )
