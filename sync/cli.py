"""The `tasksync` command: the global flags, the commands put together, errors mapped.

The commands live in `sync.commands`, a module per group; each is a few lines: it asks `App`
(sync/app.py) for the settings, the store or the clients, and calls one function of the core
(`pipeline`, `schema`, `readonly`, `report`, `images`, `demo`). Library code never raises
click exceptions; `main` alone turns `TasksyncError`s into one line on stderr and an exit code
(see sync/errors.py and the README's table). What a person sees (logging, progress, tables)
is `sync.console`.
"""

from __future__ import annotations

import sys
import traceback

import click

from sync import __version__
from sync.app import App
from sync.commands import db, deploy, images, reading, running, tools
from sync.console import setup_logging, silence_stdout
from sync.errors import TasksyncError


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


for command in (
    db.db,
    running.backfill,
    running.sync_cmd,
    running.run,
    reading.query,
    reading.export,
    reading.status,
    reading.report,
    images.images,
    tools.config_group,
    tools.simulate,
    tools.demo,
    deploy.deploy,
):
    cli.add_command(command)


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
    except OSError as exc:  # the machine said no: a full disk, output that cannot be written
        if verbose:
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        silence_stdout()  # stdout may be what failed
        click.echo(f"tasksync: error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        click.echo(
            f"tasksync: internal error: {type(exc).__name__}: {exc} "
            "(run with -v for the traceback)",
            err=True,
        )
        sys.exit(1)
