"""The `tasksync` command: parse flags, build the app state, call the core, map errors.

Each command is a few lines: it asks `App` for the settings, the store or the clients, and
calls one function of the core (`pipeline`, `schema`, `readonly`, `report`, `demo`).
Library code never raises click exceptions; this module alone turns `TasksyncError`s into one
line on stderr and an exit code (see sync/errors.py and the README's table). What a person
sees (logging, progress, tables) is `sync.console`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sync import __version__
from sync.config import Settings, effective_view, load
from sync.console import ProgressDisplay, log_run, render, setup_logging, stop_on_signals
from sync.errors import ConfigError, TasksyncError

if TYPE_CHECKING:
    from sync.runs import RunReport
    from sync.store import Store

log = logging.getLogger("tasksync")


@dataclass
class App:
    """What every command needs: the settings (loaded on first use), the global flags, and
    the store and clients built from them."""

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

    def store(self, *, migrate_check: bool = True) -> Store:
        """The archive, connected (and, unless told otherwise, at the newest revision);
        closed when the command ends."""
        from sync import schema
        from sync.store import Store

        store = Store(self.settings.database.url)
        click.get_current_context().call_on_close(store.dispose)
        store.ping()
        if migrate_check:
            schema.require_current(store)
        return store

    def run_sources(
        self,
        name: str | None,
        run: Callable[..., RunReport],
        *,
        progress: str | None = None,
        **options: Any,
    ) -> None:
        """`run(store, client, src, stop=..., **options)` for each selected source, one log
        line per run; with several sources a failing one is logged and the others go on,
        and the exit code is the worst. `progress` labels a progress bar per source."""
        from sync.client import connect

        sources = self.settings.source(name)
        store = self.store()
        worst: TasksyncError | None = None
        for src in sources:
            client = connect(src)
            try:
                with stop_on_signals() as stop:
                    if progress:
                        with ProgressDisplay(f"{progress} {src.name}") as bar:
                            report = run(store, client, src, stop=stop, progress=bar, **options)
                    else:
                        report = run(store, client, src, stop=stop, **options)
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
    from sync import schema

    password = None
    if password_env and not print_only:
        password = os.environ.get(password_env)
        if not password:
            raise ConfigError(f"--password-env {password_env}: the variable is not set")
    store = app.store(migrate_check=False)
    for stmt in schema.grant_reader(store, name, password, host=host, execute=not print_only):
        click.echo(f"{stmt};")
    if print_only:
        if password_env:
            click.echo("-- the password is left out of what is printed; set it yourself")
    else:
        click.echo(f"-- done: {name} can read the archive; set [query] url to log in as it")


@db.command("rederive")
@pass_app
def db_rederive(app: App) -> None:
    """Recompute every task's columns from its server object (after a fix to derivation)."""

    def say(checked: int, updated: int) -> None:
        if checked % 50_000 < 1000:
            log.info("rederive: %d tasks checked, %d updated", checked, updated)

    checked, updated = app.store().rederive(progress=say)
    click.echo(f"{checked} tasks checked, {updated} updated from their stored JSON")


@db.command("vacuum")
@pass_app
def db_vacuum(app: App) -> None:
    """Compact the archive and give freed space back to the filesystem (blocks writes)."""
    from sync import schema

    store = app.store()
    before = schema.archive_bytes(store)
    schema.vacuum(store)
    after = schema.archive_bytes(store)
    click.echo(f"archive: {before / 1e6:,.1f} MB before, {after / 1e6:,.1f} MB after")


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
@cli.command()
@click.option("--source", "name", help="Only this source (default: all).")
@click.option("--restart", is_flag=True, help="Ignore the checkpoint and walk from the top.")
@click.option(
    "--ids-from",
    type=click.Path(dir_okay=False, path_type=Path),
    help="api = ids: a file of task ids (one a line) to fetch.",
)
@pass_app
def backfill(app: App, name: str | None, restart: bool, ids_from: Path | None) -> None:
    """Walk everything the server lists into the archive (resumable)."""
    from sync import pipeline

    ids = pipeline.read_ids_file(ids_from) if ids_from else []
    app.run_sources(
        name,
        pipeline.backfill,
        progress="backfill",
        restart=restart,
        fetch_process=True,
        ids=ids,
    )


@cli.command("sync")
@click.option("--source", "name", help="Only this source (default: all).")
@click.option("--sweep", is_flag=True, help="A full drift-aware walk that also marks gone tasks.")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option(
    "--allow-mass-gone",
    is_flag=True,
    help="Let a sweep mark more than mass_gone_share of the archive gone.",
)
@click.option(
    "--ids-from",
    type=click.Path(dir_okay=False, path_type=Path),
    help="api = ids: a file of task ids (one a line) to refresh.",
)
@pass_app
def sync_cmd(
    app: App,
    name: str | None,
    sweep: bool,
    dry_run: bool,
    allow_mass_gone: bool,
    ids_from: Path | None,
) -> None:
    """One incremental sync (new tasks + unfinished re-checks), or a sweep with --sweep."""
    from sync import pipeline

    if sweep:
        app.run_sources(
            name,
            pipeline.sweep,
            dry_run=dry_run,
            allow_mass_gone=allow_mass_gone,
            fetch_process=True,
        )
    else:
        ids = pipeline.read_ids_file(ids_from) if ids_from else []
        app.run_sources(name, pipeline.incremental, dry_run=dry_run, ids=ids)


@cli.command()
@pass_app
def run(app: App) -> None:
    """The daemon: scheduled syncs and sweeps per source until SIGTERM/SIGINT."""
    from sync.scheduler import Daemon

    settings = app.settings
    settings.source(None)  # at least one source
    for src in settings.sources:
        src.token()  # a missing secret fails now, not at the first tick
    Daemon(settings, app.store()).run()


# ---- reading --------------------------------------------------------------------------------
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
@click.option("--source", "name", help="Only this source's tasks (default: every source).")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
    help="Only tasks that arrived or changed at or after this UTC time.",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@pass_app
def export(app: App, name: str | None, since: datetime | None, fmt: str) -> None:
    """Stream archived tasks as the server sent them, one JSON object per line."""
    import orjson

    store = app.store()
    if name is not None and name not in store.sources():
        raise ConfigError(f"--source: the archive has no tasks of a source named {name!r}")
    out = sys.stdout.buffer
    try:
        for _source, obj in store.export(name, since and since.replace(tzinfo=UTC)):
            out.write(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))
        out.flush()
    except BrokenPipeError:  # `| head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@cli.command()
@click.option(
    "--no-server", is_flag=True, help="Read the archive only; do not ask servers for their newest."
)
@pass_app
def status(app: App, no_server: bool) -> None:
    """Per source: tasks archived, unfinished and gone, the last runs, the last error, and how
    far the archive lags the server."""
    from sync import status as st

    store = app.store()
    now = datetime.now(UTC)
    configured = {s.name: s for s in app.settings.sources}
    found = st.gather(store, list(configured) or None)
    for one in found:
        src = configured.get(one.name)
        if no_server:
            one.server_note = "not asked (--no-server)"
        elif src is None:
            one.server_note = "not in the config"
        else:
            one.server_newest, one.server_note = st.ask_server(store, src, now)
    for line in st.render(found, now):
        click.echo(line)


@cli.group()
def images() -> None:
    """Archive task pictures and videos before their links expire ([images] in the config)."""


@images.command("fetch")
@click.option("--source", "name", help="Only this source (default: every configured source).")
@click.option("--limit", type=click.IntRange(min=1), help="Try at most this many files.")
@pass_app
def images_fetch(app: App, name: str | None, limit: int | None) -> None:
    """Find new links in archived tasks, then fetch what is due, soonest-expiring first."""
    from sync import images as img

    settings = app.settings
    sources = [(s.name, s.base_url) for s in settings.source(name)]
    store = app.store()
    with ProgressDisplay("images", unit="files") as progress:
        report = img.run(
            store,
            settings.images,
            sources,
            limit=limit,
            progress=lambda batches, done, total: progress(batches, done, total),
        )
    click.echo(report.line())


@images.command("verify")
@pass_app
def images_verify(app: App) -> None:
    """Re-hash every fetched file; exit 1 when one is missing or corrupted."""
    from sync import images as img

    result = img.verify(app.store(), app.settings.images)
    for path in result.missing:
        click.echo(f"missing:   {path}")
    for path in result.corrupted:
        click.echo(f"corrupted: {path}")
    click.echo(
        f"{result.ok} files intact, {len(result.missing)} missing, "
        f"{len(result.corrupted)} corrupted (in {app.settings.images.dir})"
    )
    if result.missing or result.corrupted:
        raise SystemExit(1)


DATE = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


@cli.command()
@click.option("--source", "name", help="Only this source (default: each source, separately).")
@click.option("--since", type=DATE, help="Tasks submitted at or after this time (in --tz).")
@click.option("--until", type=DATE, help="Tasks submitted before this time (in --tz).")
@click.option("--by", type=click.Choice(["day", "week", "month"]), default="day", show_default=True)
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone of days and hours.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report as one self-contained HTML page with charts.",
)
@click.option(
    "--datasette-metadata",
    is_flag=True,
    help="Print Datasette metadata for the archive's tables, views and canned queries.",
)
@pass_app
def report(
    app: App,
    name: str | None,
    since: datetime | None,
    until: datetime | None,
    by: str,
    tz: str,
    fmt: str,
    html_path: Path | None,
    datasette_metadata: bool,
) -> None:
    """Per period and action: tasks by outcome, success rate, queue and run time (p50, p95,
    max); the top failure reasons; tasks by weekday and hour."""
    from sync import report as rp

    if datasette_metadata:
        from sync.datasette import metadata

        url = app.settings.database.url
        stem = Path(url.split("///", 1)[-1]).stem if url.startswith("sqlite") else "archive"
        click.echo(json.dumps(metadata(stem), indent=2, ensure_ascii=False))
        return
    zone = _zone(tz)
    start = since.replace(tzinfo=zone).astimezone(UTC) if since else None
    end = until.replace(tzinfo=zone).astimezone(UTC) if until else None
    if start and end and start >= end:
        raise ConfigError("--since must be before --until")
    store = app.store()
    if name is not None and name not in store.sources():
        raise ConfigError(f"--source: the archive has no tasks of a source named {name!r}")
    period: rp.By = "week" if by == "week" else "month" if by == "month" else "day"
    result = rp.build_report(
        store, source=name, since=start, until=end, by=period, tz=zone, tz_name=tz
    )
    if html_path is not None:
        from sync.report_html import render_html

        tmp = html_path.with_name(f".{html_path.name}.tmp")
        try:
            tmp.write_text(render_html(result), encoding="utf-8")
            tmp.replace(html_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"--html {html_path}: {exc.strerror or exc}") from None
        click.echo(f"wrote {html_path} ({len(result.sources)} sources, {result.by}s in {tz})")
        return
    if fmt == "json":
        click.echo(json.dumps(rp.as_json(result), indent=2, ensure_ascii=False))
    elif fmt == "csv":
        rows = [tuple(rp.row_values(r)) for r in result.rows]
        for line in render(list(rp.COLUMNS), rows, "csv"):
            click.echo(line)
    else:
        for line in rp.as_lines(result):
            click.echo(line)


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"--tz: unknown time zone {name!r} (an IANA name such as Europe/Berlin)"
        ) from None


# ---- config, simulator, demo --------------------------------------------------------------------
@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@pass_app
def config_check(app: App) -> None:
    """Validate the config and print the effective settings, secrets redacted."""
    from sync.families import describe, detect

    settings = app.settings
    click.echo(f"# config: {settings.path or '(none: defaults and environment)'}")
    click.echo(json.dumps(effective_view(settings), indent=2, ensure_ascii=False))
    for src in settings.sources:
        src.token()  # a missing secret is a config error, said now rather than at 3 a.m.
    for src in settings.sources:
        if src.api != "auto":
            continue
        # One quick, read-only try per probe: this is a check, not a run.
        quick = src.model_copy(update={"retry_attempts": 1, "timeout_s": min(src.timeout_s, 5)})
        from sync.client import connect

        with connect(quick) as client:
            try:
                found, evidence = detect(client)
                click.echo(f"# source {src.name}: api = auto finds {describe(found)} ({evidence})")
            except TasksyncError as exc:
                click.echo(f"# source {src.name}: api = auto could not tell: {exc}")


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
@click.option(
    "--images", "with_images", is_flag=True, help="Finished tasks link to pictures served here."
)
@click.option(
    "--api",
    type=click.Choice(["plus", "trueai", "novicezk", "newapi", "ids"]),
    default="plus",
    show_default=True,
    help="Which server family to play.",
)
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
    with_images: bool,
    api: str,
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
        api=api,
        images=with_images,
    )
    try:
        server = SimulatorServer(sim, host, port).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    click.echo(
        f"simulator ({api}) serving {tasks} tasks at {server.url} (Ctrl-C to stop)", err=True
    )
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
@click.option(
    "--api",
    type=click.Choice(["plus", "trueai", "novicezk", "newapi", "ids"]),
    default="plus",
    show_default=True,
    help="Which server family the simulator plays (the demo's config says api = auto).",
)
def demo(db_path: str, tasks: int, api: str) -> None:
    """Offline demo: simulator → SQLite backfill → incremental sync → history answers."""
    from sync.demo import run_demo

    run_demo(Path(db_path), tasks, api)


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
