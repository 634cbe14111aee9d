"""`tasksync db ...`: migrations, read-only logins, re-deriving columns, vacuum, checks, backups."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from sync.app import App, pass_app
from sync.errors import ConfigError, TasksyncError

log = logging.getLogger("tasksync")


@click.group()
def db() -> None:
    """Schema migrations (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def db_upgrade(app: App, revision: str) -> None:
    """Migrate the database up to REVISION (default: head)."""
    from sync.archive import schema

    store = app.store(migrate_check=False, create=True)
    schema.upgrade(store, revision)
    click.echo(f"database {store.display_url} at revision {schema.current(store)}")


@db.command("downgrade")
@click.argument("revision")
@pass_app
def db_downgrade(app: App, revision: str) -> None:
    """Migrate the database down to REVISION (e.g. 0001, or base)."""
    from sync.archive import schema

    store = app.store(migrate_check=False)
    schema.downgrade(store, revision)
    click.echo(f"database {store.display_url} at revision {schema.current(store) or 'base'}")


@db.command("current")
@pass_app
def db_current(app: App) -> None:
    """Print the database's schema revision and the newest one tasksync knows."""
    from sync.archive import schema

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
    from sync.archive import schema

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
    from sync.archive import export

    def say(checked: int, updated: int) -> None:
        if checked % 50_000 < 1000:
            log.info("rederive: %d tasks checked, %d updated", checked, updated)

    checked, updated = export.rederive(app.store(), progress=say)
    click.echo(f"{checked} tasks checked, {updated} updated from their stored JSON")


@db.command("vacuum")
@pass_app
def db_vacuum(app: App) -> None:
    """Compact the archive and give freed space back to the filesystem (blocks writes)."""
    from sync.archive import schema

    store = app.store()
    before = schema.archive_bytes(store)
    schema.vacuum(store)
    after = schema.archive_bytes(store)
    click.echo(f"archive: {before / 1e6:,.1f} MB before, {after / 1e6:,.1f} MB after")


@db.command("check")
@pass_app
def db_check(app: App) -> None:
    """Exit 1 unless the database is at head and matches the models."""
    from sync.archive import schema

    store = app.store(migrate_check=False)
    schema.require_current(store)
    diffs = schema.check(store)
    if diffs:
        raise TasksyncError(f"schema differs from the models: {'; '.join(diffs)[:500]}")
    click.echo(f"database {store.display_url} is at head ({schema.head()}) and matches the models")


@db.command("backup")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def db_backup(app: App, path: Path) -> None:
    """Copy a SQLite archive to PATH, online and consistent (never overwrites); for
    PostgreSQL or MariaDB, print the dump command to run (exit 2)."""
    import shlex

    from sync.archive import backup, schema
    from sync.archive.urls import normalize_url

    url = normalize_url(app.settings.database.url)
    backend = url.get_backend_name()
    if backend != "sqlite":
        cmd = shlex.join(backup.dump_command(url.render_as_string(hide_password=False), str(path)))
        click.echo(cmd)
        name, secret = (
            ("PostgreSQL", "PGPASSWORD or ~/.pgpass")
            if backend == "postgresql"
            else ("MariaDB", "MYSQL_PWD or ~/.my.cnf")
        )
        raise ConfigError(
            f"a {name} archive is backed up with its own dump tool: run the command above "
            f"(the password comes from {secret}; see docs/operations.md)"
        )
    schema.require_sqlite_file(app.settings.database.url)
    result = backup.backup_sqlite(Path(url.database or ""), path)
    click.echo(
        f"{result.path}: {result.tasks:,} tasks, {result.bytes / 1e6:,.1f} MB, "
        f"checked, in {result.seconds:.1f}s"
    )
