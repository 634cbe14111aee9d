"""`tasksync query`, `export`, `status` and `report`: the commands that read the archive."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from sync.app import App, pass_app
from sync.commands import FiniteRange
from sync.console import reader_may_leave, render
from sync.errors import ConfigError, printable

DATE = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])
TABLE_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)


@click.command()
@click.argument("sql")
@TABLE_FORMAT
@click.option(
    "--timeout",
    "timeout_s",
    type=FiniteRange(0, 86_400, min_open=True),
    metavar="SECONDS",
    help="Stop the statement after this long, at most 86400 (default: [query] timeout_s, 30).",
)
@pass_app
def query(app: App, sql: str, fmt: str, timeout_s: float | None) -> None:
    """Run one read-only SQL statement over the archive; writes are refused."""
    from sync.archive import readonly

    settings = app.settings
    timeout = settings.query.timeout_s if timeout_s is None else timeout_s
    url = settings.query.url or settings.database.url
    with readonly.run(url, sql, timeout) as (cols, rows), reader_may_leave():
        for text in render(cols, rows, fmt):
            click.echo(text)


@click.command()
@click.option("--source", "name", help="Only this source's tasks (default: every source).")
@click.option(
    "--since",
    type=DATE,
    help="Only tasks that arrived or changed at or after this UTC time.",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@pass_app
def export(app: App, name: str | None, since: datetime | None, fmt: str) -> None:
    """Stream archived tasks as the server sent them, one JSON object per line."""
    import orjson

    from sync.archive.export import tasks as archived

    store = app.store()
    if name is not None and name not in store.sources():
        raise ConfigError(f"--source: the archive has no tasks of a source named {name!r}")
    out = sys.stdout.buffer
    with reader_may_leave():
        for _source, obj in archived(store, name, since and since.replace(tzinfo=UTC)):
            out.write(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))
        out.flush()


@click.command()
@click.option(
    "--no-server", is_flag=True, help="Read the archive only; do not ask servers for their newest."
)
@pass_app
def status(app: App, no_server: bool) -> None:
    """Per source: tasks archived, unfinished and gone, the last runs, the last error, and how
    far the archive lags the server."""
    from sync.views import status as st

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
            one.server_newest, one.server_note = st.ask_server(store, src)
    for line in st.render(found, now):
        click.echo(line)


@click.command()
@click.option("--source", "name", help="Only this source (default: each source, separately).")
@click.option("--since", type=DATE, help="Tasks submitted at or after this time (in --tz).")
@click.option("--until", type=DATE, help="Tasks submitted before this time (in --tz).")
@click.option("--by", type=click.Choice(["day", "week", "month"]), default="day", show_default=True)
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone of days and hours.")
@TABLE_FORMAT
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
    from sync.views import report as rp

    if datasette_metadata:
        from sync.views.datasette import metadata

        url = app.settings.database.url
        stem = Path(url.split("///", 1)[-1]).stem if url.startswith("sqlite") else "archive"
        click.echo(json.dumps(metadata(stem), indent=2, ensure_ascii=False))
        return
    zone = _zone(tz)
    start = _in_utc(since, zone, "--since")
    end = _in_utc(until, zone, "--until")
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
        from sync.views.report_html import render_html

        _refuse_to_overwrite_a_database(html_path)
        tmp = html_path.with_name(f".{html_path.name}.tmp")
        try:
            tmp.write_text(render_html(result), encoding="utf-8")
            tmp.replace(html_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"--html {html_path}: {exc.strerror or exc}") from None
        click.echo(f"wrote {html_path} ({len(result.sources)} sources, {result.by}s in {tz})")
        return
    with reader_may_leave():
        if fmt == "json":
            click.echo(json.dumps(rp.as_json(result), indent=2, ensure_ascii=False))
        elif fmt == "csv":
            rows = [tuple(rp.row_values(r)) for r in result.rows]
            for line in render(list(rp.COLUMNS), rows, "csv"):
                click.echo(line)
        else:
            for line in rp.as_lines(result):
                click.echo(printable(line, 100_000))  # a task's text may carry escape codes


def _in_utc(when: datetime | None, zone: Any, flag: str) -> datetime | None:
    """A wall-clock time in `zone` as UTC; one line when it falls off the calendar there."""
    if when is None:
        return None
    try:
        return when.replace(tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError):
        raise ConfigError(
            f"{flag}: {when.isoformat(' ')} in that time zone is not a date of the calendar in UTC"
        ) from None


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


def _refuse_to_overwrite_a_database(path: Path) -> None:
    """`--html` never replaces a SQLite database (the archive itself, above all)."""
    if not path.name:
        raise ConfigError("--html: a file name is needed")
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return
    if head == b"SQLite format 3\x00":
        raise ConfigError(f"--html {path}: that is a SQLite database, not overwritten")
