"""Shared test helpers: compare the archive with the simulator's truth, field by field."""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import func, select

from sync.models import SyncRun, Task, TaskEvent
from sync.records import normalize
from sync.simulator import Simulator
from sync.store import Store

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
        return {r["id"]: dict(r) for r in rows}


def assert_archive_equals_truth(store: Store, sim: Simulator, source: str = "main") -> None:
    """Every listed task is archived with exactly the expected columns; nothing else present."""
    truth = sim.truth()
    got = archive(store, source)
    present = {tid for tid, row in got.items() if row["gone_at"] is None}
    assert present == set(truth), (
        f"missing {sorted(set(truth) - present)[:5]}, extra {sorted(present - set(truth))[:5]}"
    )
    for tid, task in truth.items():
        expected = normalize(source, task)
        assert not hasattr(expected, "reason"), expected
        row = got[tid]
        for col in COMPARED:
            assert row[col] == expected.row[col], (tid, col, row[col], expected.row[col])  # type: ignore[union-attr]


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


def sim_transport(sim: Simulator) -> Any:
    """An httpx MockTransport that answers from the simulator in-process (no sockets)."""
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        reply = sim.handle(request.method, request.url.path, dict(request.headers), request.content)
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
