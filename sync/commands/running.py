"""`tasksync backfill`, `sync` and `run`: the commands that walk a server into the archive."""

from __future__ import annotations

from pathlib import Path

import click

from sync.app import App, pass_app
from sync.errors import ConfigError


@click.command()
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
    from sync.jobs import pipeline
    from sync.jobs.ids import read_ids_file

    ids = read_ids_file(ids_from) if ids_from else []
    app.run_sources(
        name,
        pipeline.backfill,
        progress="backfill",
        restart=restart,
        fetch_process=True,
        ids=ids,
    )


@click.command("sync")
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
    from sync.jobs import pipeline
    from sync.jobs.ids import read_ids_file

    if sweep:
        if ids_from:
            raise ConfigError("--ids-from: not with --sweep (a sweep looks at every archived id)")
        app.run_sources(
            name,
            pipeline.sweep,
            dry_run=dry_run,
            allow_mass_gone=allow_mass_gone,
            fetch_process=True,
        )
    else:
        ids = read_ids_file(ids_from) if ids_from else []
        app.run_sources(name, pipeline.incremental, dry_run=dry_run, ids=ids)


@click.command()
@pass_app
def run(app: App) -> None:
    """The daemon: scheduled syncs and sweeps per source until SIGTERM/SIGINT."""
    from sync.jobs.scheduler import Daemon

    settings = app.settings
    settings.source(None)  # at least one source
    for src in settings.sources:
        src.token()  # a missing secret fails now, not at the first tick
    Daemon(settings, app.store()).run()
