"""The read side: pages of the task list made ready to save, read ahead of the writer.

    server --> client (ServerPage) --> reader (ReadPage) --> pipeline --> store

A `ReadPage` is what the walker and the store need from a page: its place in the list, the
ids on it, and its tasks prepared for saving (`sync.tasks.batch`: fingerprints, and for pages of
mostly new tasks their bind parameters). Requests always stay strictly sequential (page n+1 is
requested only after page n arrived), which the walker's drift check relies on. Two readers
overlap the rest with the writer's work:

* `ThreadReader`: one background thread. Cheap to start, but it shares the GIL with the
  writer, so only network and database waits overlap.
* `ProcessReader`: a child process (`python -m sync.server.reader`) with its own client fetches,
  parses, fingerprints and binds pages and hands them over a pipe, so CPU work overlaps too,
  on a second core. It loads neither SQLAlchemy nor pydantic (about 40 MB).

`PageReader` is the page source of one walk: it starts on a thread and, when the caller allows
a process and the walk is long, switches to one once it is up. Either way at most a page or
two wait ahead (flat memory), and asking for any page other than the next one (the walker
stepping back) discards what was read ahead and restarts there.

The child prepares pages with the same `sync.tasks` code as the parent: anything new that row
building needs must reach the child through `_Setup` as well, and so must every setting of
the walk (`_Setup.source`, the walk's own `src`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import stamina.instrumentation

from sync.errors import TasksyncError
from sync.server.client import Client
from sync.server.families.adapters import named
from sync.server.families.base import tasks_of
from sync.server.pages import ServerPage, loads
from sync.tasks.batch import Binder, Prepared, prepare

if TYPE_CHECKING:
    from sync.archive.runs import SaveResult
    from sync.config import SourceSettings

log = logging.getLogger("tasksync.reader")

# A walk with at least this many pages still to read moves to a fetch process.
PROCESS_MIN_PAGES = 100
Clock = Callable[[], datetime]


@dataclass(slots=True)
class ReadPage:
    """One page as the read side hands it on: where it is in the list, its ids, and its tasks
    prepared for saving."""

    number: int
    total: int | None
    last: bool
    ids: list[str]
    keys: list[str]
    batch: Prepared


class NewShare:
    """How much of the last saved page was new or changed: pages of a backfill into an empty
    archive get their rows built ahead; a re-walk over an unchanged archive skips that."""

    def __init__(self) -> None:
        self.value = 1.0

    def update(self, res: SaveResult) -> None:
        self.value = (res.inserted + res.changed + res.returned) / max(1, res.tasks_seen)

    def build_rows(self) -> bool:
        return self.value > 0.5


class ThreadReader:
    """Reads pages ahead on one background thread while the caller writes."""

    def __init__(
        self,
        fetch: Callable[[int], ServerPage],
        prepare: Callable[[ServerPage], Prepared],
        depth: int,
    ) -> None:
        self.fetch_one = fetch
        self.prepare = prepare
        self.depth = depth
        self.thread: threading.Thread | None = None
        self.halt = threading.Event()
        self.queue: queue.Queue[tuple[int, ReadPage | None, BaseException | None]] = queue.Queue()
        self.slots = threading.Semaphore(max(1, depth))
        self.expect = -1

    def read(self, n: int) -> ReadPage:
        """Page n fetched and prepared here, now."""
        page = self.fetch_one(n)
        return ReadPage(page.number, page.total, page.last, page.ids, page.keys, self.prepare(page))

    def _run(
        self, start: int, halt: threading.Event, out: queue.Queue[Any], slots: threading.Semaphore
    ) -> None:
        n = start
        while not halt.is_set():
            slots.acquire()
            if halt.is_set():
                return
            try:
                page = self.read(n)
            except BaseException as exc:  # handed to the caller, raised there
                out.put((n, None, exc))
                return
            out.put((n, page, None))
            if page.last or not page.keys:
                return
            n += 1

    def _restart(self, n: int) -> None:
        self.close()
        self.halt = threading.Event()
        self.queue = queue.Queue()
        self.slots = threading.Semaphore(self.depth)
        self.thread = threading.Thread(
            target=self._run, daemon=True, args=(n, self.halt, self.queue, self.slots)
        )
        self.thread.start()
        self.expect = n

    def __call__(self, n: int, *, final: bool = False) -> ReadPage:
        """Page n; with `final`, the thread reads nothing more after it."""
        if self.depth < 1:  # no read-ahead: fetch and prepare here, one page at a time
            return self.read(n)
        if n != self.expect or self.thread is None:
            self._restart(n)
        got, page, exc = self.queue.get()
        if final:
            self.halt.set()
        self.slots.release()
        if exc is not None:
            self.thread = None
            raise exc
        assert page is not None and got == n
        self.expect = n + 1
        if page.last or not page.keys:
            self.thread = None  # the thread stopped at the end; a step back restarts it
        return page

    def close(self) -> None:
        self.halt.set()
        if self.thread is not None:
            self.slots.release()  # wake a thread waiting for a free slot, so it sees `halt`
        self.thread = None


class _Setup(NamedTuple):
    """Everything the child needs, sent once: the walk's source settings (plain values, since
    it has no pydantic: its client's and its page size, from the same `src` the parent walks
    with), how to reopen the client, how to bind rows, whether to bind them itself, and whom
    to watch."""

    source: dict[str, Any]
    client: tuple[Any, ...]
    binder: Binder
    bind_here: bool
    parent: int


class _Shipped(NamedTuple):
    """A page crossing the pipe: prepared in the child, or (a page of mostly known tasks)
    still the server's bytes, for the parent to parse and prepare."""

    number: int
    total: int | None
    last: bool
    ids: list[str]
    keys: list[str]
    batch: Prepared | None
    body: bytes | None


class ProcessReader:
    """Fetches and prepares pages in a child process (see the module's docstring).

    The child may run `depth` pages ahead: it ships a page only against a credit, and the
    parent hands back one credit per page it takes, so at most `depth` pages wait in the pipe
    and one more is being fetched. The child leaves when told, when the pipe closes, or when
    its parent dies (it watches its parent id), so a `kill -9` of tasksync leaves no orphan.
    """

    def __init__(
        self,
        client: Client,
        src: SourceSettings,
        binder: Binder,
        build_rows: Callable[[], bool],
        prepare: Callable[[ServerPage], Prepared],
        depth: int = 1,
        bind_here: bool = True,
    ) -> None:
        assert client.spawn_args is not None
        self.client = client
        self.build_rows = build_rows
        self.prepare = prepare
        self.depth = max(1, depth)
        # A fresh interpreter running this module (never a fork of a process with threads,
        # and unlike multiprocessing's spawn, never a re-run of the caller's main script).
        mine, theirs = socket.socketpair()
        for sock in (mine, theirs):  # room for the pages in flight without blocking the child
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 << 20)
        here = str(Path(__file__).resolve().parents[2])  # the folder holding `sync`
        path = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sync.server.reader", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        theirs.close()
        self.conn = Connection(mine.detach())
        try:
            setup = _Setup(src.model_dump(), client.spawn_args, binder, bind_here, os.getpid())
            self.conn.send(setup)
        except OSError:  # the child is already gone
            self.close()
            raise
        self.up = False
        self.gen = 0
        self.expect = -1
        self.sent_hint: bool | None = None
        self.counts = (0, 0)

    def ready(self) -> bool:
        """Whether the child is up (without waiting); raises if it failed to start."""
        if not self.up and self.conn.poll():
            try:
                self.up = self.conn.recv() == ("ready",)
            except (EOFError, OSError):
                self.up = False
            if not self.up:
                raise TasksyncError("the fetch process failed to start")
            log.info("source %s: pages now read by a fetch process", self.client.source.name)
        return self.up

    def __call__(self, n: int) -> ReadPage:
        hint = self.build_rows()
        if n != self.expect:
            self.gen += 1
            self.conn.send(("start", self.gen, n, hint, self.depth))
            self.sent_hint = hint
        elif hint != self.sent_hint:
            self.conn.send(("hint", hint))
            self.sent_hint = hint
        while True:
            try:
                gen, got, shipped, exc, counts = self.conn.recv()
            except (EOFError, OSError):
                self.expect = -1
                raise TasksyncError("the fetch process ended unexpectedly") from None
            self.client.requests += counts[0] - self.counts[0]
            self.client.retries += counts[1] - self.counts[1]
            self.counts = counts
            if gen != self.gen:
                continue  # read ahead before a step back: discarded
            if exc is not None:
                self.expect = -1
                raise exc
            assert got == n and shipped is not None
            self.conn.send(("credit", gen))
            self.expect = n + 1
            return self._unpack(shipped)

    def _unpack(self, s: _Shipped) -> ReadPage:
        batch = s.batch
        if batch is None:  # shipped as the server's bytes: parse and prepare it here
            assert s.body is not None
            page = ServerPage(s.number, 0, tasks_of(loads(s.body)), s.total, s.last)
            batch = self.prepare(page)
        return ReadPage(s.number, s.total, s.last, s.ids, s.keys, batch)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.conn.close()
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


class PageReader:
    """The page source of one walk: read-ahead on a thread, moving a long walk to a fetch
    process as soon as that is up, when `process` allows it and the client can be reopened
    there (a client with a custom transport, as in tests, cannot).

    `src` is what the walk reads, in one place: the thread asks for its page size, and the
    fetch process gets the whole of it (its client's settings and its page size alike)."""

    def __init__(
        self,
        client: Client,
        src: SourceSettings,
        binder: Binder,
        clock: Clock,
        *,
        process: bool,
        bind_in_child: bool,
    ) -> None:
        self.hint = NewShare()

        def prepare_page(page: ServerPage) -> Prepared:
            return prepare(
                binder,
                src.name,
                page.tasks,
                clock(),
                build_rows=self.hint.build_rows(),
                shape=client.shape,
            )

        self.thread: ThreadReader | None = ThreadReader(
            lambda n: client.query_page(n, src.page_size), prepare_page, src.concurrency - 1
        )
        self.spawn: Callable[[], ProcessReader] | None = None
        if process and src.concurrency > 1 and client.spawn_args is not None:
            # Where rows get bound: SQLite's writer has CPU to spare while its pages are
            # fetched; a PostgreSQL or MariaDB writer mostly waits for its server, so the
            # child binds them (the README's performance section has the figures).
            self.spawn = lambda: ProcessReader(
                client,
                src,
                binder,
                self.hint.build_rows,
                prepare_page,
                src.concurrency - 1,
                bind_here=bind_in_child,
            )
        self.proc: ProcessReader | None = None

    def saw(self, res: SaveResult) -> None:
        """What saving the last page did: decides whether rows are built ahead."""
        self.hint.update(res)

    def __call__(self, n: int) -> ReadPage:
        if self.proc is not None:
            try:
                if self.proc.ready():
                    if self.thread is not None:
                        thread, self.thread = self.thread, None
                        if n == thread.expect and thread.depth > 0:
                            # The thread has this page or is reading it: take it, and let the
                            # process start at the next one, so no request is made twice.
                            return thread(n, final=True)
                        thread.close()
                    return self.proc(n)
            except TasksyncError as exc:
                if self.proc.up:
                    raise
                log.warning("%s; reading on a thread instead", exc)
                self.proc.close()
                self.proc = None
        assert self.thread is not None
        page = self.thread(n)
        size = len(page.keys)
        if self.spawn is not None and self.proc is None and page.total and size:
            if page.total // size - n >= PROCESS_MIN_PAGES:
                try:
                    self.proc = self.spawn()
                except (OSError, ValueError) as exc:  # ValueError: no pass_fds (not POSIX)
                    log.warning("could not start a fetch process (%s); reading on a thread", exc)
            self.spawn = None
        return page

    def close(self) -> None:
        if self.thread is not None:
            self.thread.close()
        if self.proc is not None:
            self.proc.close()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(0)


def _worker(conn: Connection) -> None:
    """The fetch process: from `start` on, fetch, prepare and ship pages while it holds
    credits, until the end of the list or the next command."""
    setup: _Setup = conn.recv()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this child stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Nothing printed from here: errors go to the parent, retries are counted there, and
    # stamina's own retry log and metrics would be unformatted and unseen in this process.
    logging.getLogger().addHandler(logging.NullHandler())
    stamina.instrumentation.set_on_retry_hooks([])
    threading.Thread(target=_watch_parent, args=(setup.parent,), daemon=True).start()
    token, wait_initial, wait_max, family, learned = setup.client
    # The walk's settings as plain attributes: validated in the parent already, and pydantic
    # would cost this process a fifth of its memory.
    src = cast("SourceSettings", SimpleNamespace(**setup.source))
    client = Client(
        src, token=token, wait_initial=wait_initial, wait_max=wait_max, family=named(family)
    )
    client.api().restore(learned)
    gen, n, build_rows, running, credits = 0, 0, True, False, 0
    try:
        conn.send(("ready",))
        while True:
            while not running or credits < 1 or conn.poll():
                cmd = conn.recv()
                if cmd[0] == "stop":
                    return
                if cmd[0] == "start":
                    _, gen, n, build_rows, credits = cmd
                    running = True
                elif cmd[0] == "hint":
                    build_rows = cmd[1]
                elif cmd[0] == "credit" and cmd[1] == gen:
                    credits += 1
            # Pages of mostly new tasks are fingerprinted here, and with `bind_here` their rows
            # bound too; pages of mostly known tasks travel as the reply's bytes, to be
            # fingerprinted by the parent, which is idle then (cheaper than pickling
            # fingerprints across).
            try:
                page = client.query_page(n, src.page_size, keep_body=not build_rows)
                batch = None
                if build_rows:
                    now = datetime.now(UTC)
                    batch = prepare(
                        setup.binder,
                        src.name,
                        page.tasks,
                        now,
                        build_rows=setup.bind_here,
                        shape=client.shape,
                    )
                ship = _Shipped(n, page.total, page.last, page.ids, page.keys, batch, page.body)
            except Exception as exc:
                conn.send((gen, n, None, _picklable(exc), (client.requests, client.retries)))
                running = False
                continue
            conn.send((gen, n, ship, None, (client.requests, client.retries)))
            credits -= 1
            if page.last or not ship.keys:
                running = False
            n += 1
    except (EOFError, OSError):
        return  # the parent went away
    finally:
        client.close()


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return TasksyncError(f"{type(exc).__name__}: {exc}")
    return exc


if __name__ == "__main__":
    # Run as `sync.server.reader`, not as `__main__`, so the pages it pickles name their
    # types by the module the parent knows.
    from sync.server.reader import _worker as worker

    try:
        worker(Connection(int(sys.argv[1])))
    except Exception as exc:  # the parent reports "ended unexpectedly"; one line here
        sys.stderr.write(f"tasksync fetch process: {type(exc).__name__}: {exc}\n")
        sys.exit(1)
