"""`tasksync images fetch` and `images verify`."""

from __future__ import annotations

import click

from sync.app import App, pass_app
from sync.console import ProgressDisplay
from sync.errors import ConfigError


@click.group()
def images() -> None:
    """Archive task pictures and videos before their links expire ([images] in the config)."""


@images.command("fetch")
@click.option("--source", "name", help="Only this source (default: every configured source).")
@click.option("--limit", type=click.IntRange(min=1), help="Try at most this many files.")
@pass_app
def images_fetch(app: App, name: str | None, limit: int | None) -> None:
    """Find new links in archived tasks, then fetch what is due, soonest-expiring first."""
    from sync.images import job as img

    settings = app.settings
    if not settings.images.enabled:
        raise ConfigError("images fetch: [images] enabled = false; set it to true to fetch")
    sources = img.sources_of(settings.source(name))
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
    from sync.images import job as img

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
