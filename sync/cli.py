"""The `tasksync` command: parse, build the app state, call the core, render, map errors.

Library code never raises click exceptions; this module alone turns `TasksyncError`s into one
line on stderr and an exit code (see sync/errors.py and the README's table).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from sync import __version__
from sync.config import Settings, SourceSettings, effective_view, load
from sync.errors import ConfigError, TasksyncError
from sync.runs import COUNTERS

log = logging.getLogger("tasksync")


# ---- logging --------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created).astimezone().isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", {}))
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup_logging(verbose: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    # httpx logs every request at INFO; URLs are fine, but keep the noise for -vv.
    for name in ("httpx", "httpcore", "apscheduler", "alembic"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


# ---- state ----------------------------------------------------------------------------------
@dataclass
class App:
    """What every command needs: the settings (loaded on first use) and global flags."""

    config_path: str | None
    db_url: str | None
    verbose: int
    log_format: str
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load(self.config_path, self.db_url)
        return self._settings

    def store(self, *, migrate_check: bool = True) -> Any:
        from sync import schema
        from sync.store import Store

        store = Store(self.settings.database.url)
        click.get_current_context().call_on_close(store.dispose)
        store.ping()
        if migrate_check:
            schema.require_current(store)
        return store

    def client(self, src: SourceSettings) -> Any:
        from sync.client import Client

        return Client(src, token=src.token())


pass_app = click.make_pass_decorator(App)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file (env TASKSYNC_CONFIG; default ./tasksync.toml when present).",
)
@click.option(
    "--db",
    "db_url",
    metavar="URL",
    help="Database URL, overrides the config (env TASKSYNC_DATABASE_URL).",
)
@click.option("-v", "--verbose", count=True, help="More logging; tracebacks on errors.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log line format.",
)
@click.version_option(__version__, prog_name="tasksync")
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, db_url: str | None, verbose: int, log_format: str
) -> None:
    """Archive a Midjourney-proxy server's task list into SQL and keep it current."""
    setup_logging(verbose, log_format)
    ctx.obj = App(config_path, db_url, verbose, log_format)


# ---- db ---------------------------------------------------------------------------------------
@cli.group()
def db() -> None:
    """Schema migrations (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def db_upgrade(app: App, revision: str) -> None:
    """Migrate the database up to REVISION (default: head)."""
    from sync import schema

    store = app.store(migrate_check=False)
    schema.upgrade(store, revision)
    click.echo(f"database {store.display_url} at revision {schema.current(store)}")


@db.command("downgrade")
@click.argument("revision")
@pass_app
def db_downgrade(app: App, revision: str) -> None:
    """Migrate the database down to REVISION (e.g. 0001, or base)."""
    from sync import schema

    store = app.store(migrate_check=False)
    schema.downgrade(store, revision)
    click.echo(f"database {store.display_url} at revision {schema.current(store) or 'base'}")


@db.command("current")
@pass_app
def db_current(app: App) -> None:
    """Print the database's schema revision and the newest one tasksync knows."""
    from sync import schema

    store = app.store(migrate_check=False)
    click.echo(f"current: {schema.current(store) or 'none'}  head: {schema.head()}")


@db.command("grant-reader")
@click.argument("name")
@click.option(
    "--password-env",
    metavar="VAR",
    help="Set the login's password from this environment variable.",
)
@click.option("--host", default="%", show_default=True, help="MariaDB: the host part of the user.")
@click.option("--print", "print_only", is_flag=True, help="Print the statements; change nothing.")
@pass_app
def db_grant_reader(
    app: App, name: str, password_env: str | None, host: str, print_only: bool
) -> None:
    """Create a login that can only read the archive (for [query] url)."""
    password = None
    if password_env and not print_only:
        password = os.environ.get(password_env)
        if not password:
            raise ConfigError(f"--password-env {password_env}: the variable is not set")
    from sync import schema

    store = app.store(migrate_check=False)
    for stmt in schema.grant_reader(store, name, password, host=host, execute=not print_only):
        click.echo(f"{stmt};")
    if print_only:
        if password_env:
            click.echo("-- the password is left out of what is printed; set it yourself")
    else:
        click.echo(f"-- done: {name} can read the archive; set [query] url to log in as it")


@db.command("check")
@pass_app
def db_check(app: App) -> None:
    """Exit 1 unless the database is at head and matches the models."""
    from sync import schema

    store = app.store(migrate_check=False)
    schema.require_current(store)
    diffs = schema.check(store)
    if diffs:
        raise TasksyncError(f"schema differs from the models: {'; '.join(diffs)[:500]}")
    click.echo(f"database {store.display_url} is at head ({schema.head()}) and matches the models")


# ---- running -------------------------------------------------------------------------------
@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event; the run finishes its page, commits and stops."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second signal: the user really means it
            raise KeyboardInterrupt
        log.info(
            "%s received: finishing the current page, then stopping", signal.Signals(signum).name
        )
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def log_run(report: Any) -> None:
    """One line per run, text or JSON (the fields go into the JSON record)."""
    names = ("source", "kind", "outcome", *(c for c in COUNTERS if c != "tasks_seen"))
    fields = {k: getattr(report, k) for k in names}
    fields["duration_s"] = round(report.duration_s, 2)
    if report.dry_run:
        fields["dry_run"] = True
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    if report.error:
        text += f" error={report.error!r}"
    for note in report.notes:
        text += f" ({note})"
    log.info("run %s", text, extra={"fields": fields})


class ProgressDisplay:
    """A rich progress bar on a terminal; a plain log line every few seconds otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.last_log = 0.0

    def __enter__(self) -> ProgressDisplay:
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("tasks · {task.fields[pages]} pages"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=None, pages=0)
        return self

    def __call__(self, pages: int, tasks: int, total: int | None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=tasks, total=total, pages=pages)
            return
        now = time.monotonic()
        if now - self.last_log >= 5 or pages == 1:
            self.last_log = now
            of = f" of about {total}" if total is not None else ""
            log.info("%s: %d pages, %d tasks%s", self.label, pages, tasks, of)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_each(app: App, name: str | None, job: Callable[[Any, Any, SourceSettings], Any]) -> None:
    """Run `job` for each selected source; the exit code is the worst outcome."""
    sources = app.settings.source(name)
    store = app.store()
    worst: TasksyncError | None = None
    for src in sources:
        client = app.client(src)
        try:
            report = job(store, client, src)
            log_run(report)
        except TasksyncError as exc:
            if len(sources) == 1:
                raise
            text = str(exc)
            named = text.startswith((f"source {src.name}", f"source {src.name!r}"))
            log.error("%s", text if named else f"source {src.name}: {text}")
            worst = exc if worst is None or exc.exit_code > worst.exit_code else worst
        finally:
            client.close()
    if worst is not None:
        raise worst


@cli.command()
@click.option("--source", "name", help="Only this source (default: all).")
@click.option("--restart", is_flag=True, help="Ignore the checkpoint and walk from the top.")
@pass_app
def backfill(app: App, name: str | None, restart: bool) -> None:
    """Walk everything the server lists into the archive (resumable)."""
    from sync import pipeline

    def job(store: Any, client: Any, src: SourceSettings) -> Any:
        with stop_on_signals() as stop, ProgressDisplay(f"backfill {src.name}") as progress:
            return pipeline.backfill(
                store, client, src, restart=restart, progress=progress, stop=stop
            )

    run_each(app, name, job)


@cli.command("sync")
@click.option("--source", "name", help="Only this source (default: all).")
@click.option("--sweep", is_flag=True, help="A full drift-aware walk that also marks gone tasks.")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option(
    "--allow-mass-gone",
    is_flag=True,
    help="Let a sweep mark more than mass_gone_share of the archive gone.",
)
@pass_app
def sync_cmd(app: App, name: str | None, sweep: bool, dry_run: bool, allow_mass_gone: bool) -> None:
    """One incremental sync (new tasks + unfinished re-checks), or a sweep with --sweep."""
    from sync import pipeline

    def job(store: Any, client: Any, src: SourceSettings) -> Any:
        with stop_on_signals() as stop:
            if sweep:
                return pipeline.sweep(
                    store, client, src, dry_run=dry_run, allow_mass_gone=allow_mass_gone, stop=stop
                )
            return pipeline.incremental(store, client, src, dry_run=dry_run, stop=stop)

    run_each(app, name, job)


@cli.command()
@pass_app
def run(app: App) -> None:
    """The daemon: scheduled syncs and sweeps per source until SIGTERM/SIGINT."""
    from sync.scheduler import Daemon

    settings = app.settings
    settings.source(None)  # at least one source
    for src in settings.sources:
        src.token()  # a missing secret fails now, not at the first tick
    Daemon(settings, app.store(), log_run).run()


# ---- reading --------------------------------------------------------------------------------
def _cell(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


TABLE_SAMPLE = 500  # rows read before a table's column widths are fixed


def render(cols: list[str], rows: Iterable[tuple[Any, ...]], fmt: str) -> Iterator[str]:
    """Rows as table, CSV or JSON text, produced as they come (never all in memory)."""
    it = (tuple(_cell(v) for v in r) for r in rows)
    if fmt == "json":
        yield "["
        for n, r in enumerate(it):
            doc = json.dumps(dict(zip(cols, r, strict=True)), ensure_ascii=False, default=str)
            yield (" " if n == 0 else ",") + doc
        yield "]"
        return
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in it:
            w.writerow(r)
            if buf.tell() > 65536:
                yield buf.getvalue().rstrip("\n")
                buf.seek(0)
                buf.truncate()
        rest = buf.getvalue().rstrip("\n")
        if rest:
            yield rest
        return

    def cells(r: tuple[Any, ...]) -> list[str]:
        return [("" if v is None else str(v)).replace("\n", " ")[:60] for v in r]

    head = [cells(r) for r in itertools.islice(it, TABLE_SAMPLE)]
    widths = [max([len(c)] + [len(r[i]) for r in head]) for i, c in enumerate(cols)]

    def line(values: list[str]) -> str:
        return "  ".join(v[:w].ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    yield line(cols)
    yield "  ".join("-" * w for w in widths)
    n = 0
    for values in itertools.chain(head, map(cells, it)):
        n += 1
        yield line(values)
    yield f"({n} row{'s' if n != 1 else ''})"


@cli.command()
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    metavar="SECONDS",
    help="Stop the statement after this long (default: [query] timeout_s, 30).",
)
@pass_app
def query(app: App, sql: str, fmt: str, timeout_s: float | None) -> None:
    """Run one read-only SQL statement over the archive; writes are refused."""
    from sync import readonly

    settings = app.settings
    timeout = settings.query.timeout_s if timeout_s is None else timeout_s
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError("--timeout: a number of seconds greater than 0")
    with readonly.run(settings.query.url or settings.database.url, sql, timeout) as (cols, rows):
        for text in render(cols, rows, fmt):
            click.echo(text)


@cli.command()
@pass_app
def status(app: App) -> None:
    """Per source: last runs, tasks archived, unfinished tasks, time since last success."""
    from sync.report import source_status

    store = app.store()
    names = [s.name for s in app.settings.sources] or None
    for st in source_status(store, names):
        click.echo(st)


# ---- config, simulator, demo --------------------------------------------------------------------
@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@pass_app
def config_check(app: App) -> None:
    """Validate the config and print the effective settings, secrets redacted."""
    settings = app.settings
    click.echo(f"# config: {settings.path or '(none: defaults and environment)'}")
    click.echo(json.dumps(effective_view(settings), indent=2, ensure_ascii=False))
    for src in settings.sources:
        src.token()  # a missing secret is a config error, said now rather than at 3 a.m.


@cli.command()
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--tasks", type=int, default=10_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--token-env", metavar="NAME", help="Require the token in this env variable.")
@click.option("--arrivals", type=float, default=0.0, help="New tasks per request (live mode).")
@click.option("--updates", type=float, default=0.0, help="Status steps per request.")
@click.option("--expiries", type=float, default=0.0, help="Oldest tasks dropped per request.")
@click.option(
    "--faults",
    default="",
    metavar="SPEC",
    help="e.g. '429=0.1,5xx=0.05,truncate=0.02,slow=0.02,drop=0.01,refuse=0.01'.",
)
@click.option("--nested", is_flag=True, help="Answer with the nested Spring page shape.")
def simulate(
    port: int,
    host: str,
    tasks: int,
    seed: int,
    token_env: str | None,
    arrivals: float,
    updates: float,
    expiries: float,
    faults: str,
    nested: bool,
) -> None:
    """Run the built-in simulator alone, to point a config at."""
    from sync.simulator import Faults, Simulator, SimulatorServer

    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ConfigError(f"--token-env {token_env}: the variable is not set")
    try:
        plan = Faults.parse(faults)
    except ValueError as exc:
        raise ConfigError(f"--faults: {exc}") from None
    sim = Simulator(
        tasks,
        seed=seed,
        token=token,
        arrivals_per_request=arrivals,
        updates_per_request=updates,
        expiries_per_request=expiries,
        faults=plan,
        nested=nested,
    )
    try:
        server = SimulatorServer(sim, host, port).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    click.echo(f"simulator serving {tasks} tasks at {server.url} (Ctrl-C to stop)", err=True)
    with stop_on_signals() as stop:
        while not stop.wait(0.5):
            pass
    server.stop()


@cli.command()
@click.option(
    "--path",
    "db_path",
    default="tasksync-demo.db",
    show_default=True,
    help="The SQLite file the demo (re)creates.",
)
@click.option("--tasks", type=int, default=5000, show_default=True)
def demo(db_path: str, tasks: int) -> None:
    """Offline demo: simulator → SQLite backfill → incremental sync → history answers."""
    from sync.demo import run_demo

    run_demo(Path(db_path), tasks, ProgressDisplay)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning errors into one line and an exit code."""
    verbose = any(
        a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"})
        for a in (argv if argv is not None else sys.argv[1:])
    )
    try:
        cli.main(args=argv, prog_name="tasksync", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("tasksync: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except TasksyncError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"tasksync: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("tasksync: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        click.echo(
            f"tasksync: internal error: {type(exc).__name__}: {exc} "
            "(run with -v for the traceback)",
            err=True,
        )
        sys.exit(1)
