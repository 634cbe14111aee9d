"""`tasksync config check`, `simulate` and `demo`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sync.app import App, pass_app
from sync.commands import FiniteRange
from sync.config import effective_view
from sync.console import stop_on_signals
from sync.errors import ConfigError, TasksyncError
from sync.server.families import FAMILIES


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@pass_app
def config_check(app: App) -> None:
    """Validate the config and print the effective settings, secrets redacted."""
    from sync.server.client import connect_quick
    from sync.server.families.base import describe
    from sync.server.families.probing import detect

    settings = app.settings
    click.echo(f"# config: {settings.path or '(none: defaults and environment)'}")
    click.echo(json.dumps(effective_view(settings), indent=2, ensure_ascii=False))
    for src in settings.sources:
        src.token()  # a missing secret is a config error, said now rather than at 3 a.m.
    for src in settings.sources:
        if src.api != "auto":
            continue
        # One quick, read-only try per probe: this is a check, not a run.
        with connect_quick(src) as client:
            try:
                found, evidence = detect(client)
                click.echo(f"# source {src.name}: api = auto finds {describe(found)} ({evidence})")
            except TasksyncError as exc:
                click.echo(f"# source {src.name}: api = auto could not tell: {exc}")


def family_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--api`: which family the simulator plays, one of the registry's (plus by default)."""
    return click.option(
        "--api", type=click.Choice(FAMILIES), default="plus", show_default=True, help=help_text
    )


MAX_TASKS = 10_000_000  # the simulator holds its tasks in memory
PER_REQUEST = FiniteRange(0, 1_000)


@click.command()
@click.option("--port", type=click.IntRange(0, 65_535), default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--tasks", type=click.IntRange(0, MAX_TASKS), default=10_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--token-env", metavar="NAME", help="Require the token in this env variable.")
@click.option(
    "--arrivals", type=PER_REQUEST, default=0.0, help="New tasks per request (live mode)."
)
@click.option("--updates", type=PER_REQUEST, default=0.0, help="Status steps per request.")
@click.option("--expiries", type=PER_REQUEST, default=0.0, help="Oldest tasks dropped per request.")
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
@family_option("Which server family to play.")
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


@click.command()
@click.option(
    "--path",
    "db_path",
    default="tasksync-demo.db",
    show_default=True,
    help="The SQLite file the demo (re)creates.",
)
@click.option("--tasks", type=click.IntRange(1, MAX_TASKS), default=5000, show_default=True)
@family_option("Which server family the simulator plays (the demo's config says api = auto).")
def demo(db_path: str, tasks: int, api: str) -> None:
    """Offline demo: simulator → SQLite backfill → incremental sync → history answers."""
    from sync.demo import run_demo

    run_demo(Path(db_path), tasks, api)
