"""`tasksync deploy ...`: print the deployment kit's files (sync/deploy/) filled in for this
install. It only prints; it never installs, enables or starts anything."""

from __future__ import annotations

import re
import shutil
import sys
from importlib.resources import files
from pathlib import Path

import click

from sync.errors import ConfigError

DEFAULT_USER = "tasksync"
DEFAULT_CONFIG = "/etc/tasksync/tasksync.toml"
DEFAULT_WORKDIR = "/var/lib/tasksync"
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _unit_path(value: str, what: str) -> str:
    """An absolute path as a unit file may hold it: no spaces or control characters (a
    newline would add a directive), `%` doubled (systemd's specifier escape)."""
    if not value.startswith("/"):
        raise ConfigError(f"{what} {value!r}: an absolute path is needed")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(f"{what} {value!r}: spaces and control characters are not supported")
    return value.replace("%", "%%")


def tasksync_executable() -> str:
    """The `tasksync` script of this install: beside the running Python (a venv's bin/), else
    the one on PATH."""
    beside = Path(sys.executable).parent / "tasksync"
    if beside.is_file():
        return str(beside)
    found = shutil.which("tasksync")
    if found:
        return str(Path(found).absolute())
    raise ConfigError("cannot find the tasksync script of this install; pass --exec PATH")


def systemd_unit(user: str, config: str, workdir: str, executable: str, writable: list[str]) -> str:
    """The shipped unit with its defaults replaced, key by key (comments are kept)."""
    if not USER_RE.match(user):
        raise ConfigError(f"--user {user!r}: a user name such as tasksync")
    config, workdir, executable = (
        _unit_path(config, "--config"),
        _unit_path(workdir, "--workdir"),
        _unit_path(executable, "--exec"),
    )
    rw = [workdir] + [_unit_path(p, "writable path") for p in writable if p != workdir]
    values = {
        "User": user,
        "Group": user,
        "WorkingDirectory": workdir,
        "Environment": f"TASKSYNC_CONFIG={config}",
        "EnvironmentFile": str(Path(config).parent / "tasksync.env"),
        "ExecStartPre": f"{executable} db upgrade",
        "ExecStart": f"{executable} --log-format json run",
        "ReadWritePaths": " ".join(dict.fromkeys(rw)),
    }
    template = files("sync.deploy").joinpath("tasksync.service").read_text(encoding="utf-8")
    out = []
    for line in template.splitlines():
        key, sep, _ = line.partition("=")
        if sep and key in values:
            line = f"{key}={values[key]}"
        out.append(line)
    return "\n".join(out) + "\n"


def writable_paths(config: str, workdir: str) -> list[str]:
    """Folders the daemon writes that the config names outside the working folder: the
    [images] dir and a SQLite archive's folder. Only when the config file is here to read."""
    from sync.config import load

    path = Path(config)
    if not path.is_file():
        return []
    settings = load(config)
    out: list[str] = []
    if settings.images.enabled:
        out.append(str(settings.images.dir.absolute()))
    url = settings.database.url
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if db.is_absolute():
            out.append(str(db.parent))
    base = Path(workdir)
    return [p for p in out if not Path(p).is_relative_to(base)]


@click.group()
def deploy() -> None:
    """Print the deployment kit's files (systemd unit) for this install."""


@deploy.command("systemd")
@click.option("--user", default=DEFAULT_USER, show_default=True, help="The service's user.")
@click.option(
    "--config",
    "config",
    default=DEFAULT_CONFIG,
    show_default=True,
    metavar="PATH",
    help="The config file the service reads (secrets: tasksync.env beside it).",
)
@click.option(
    "--workdir",
    default=DEFAULT_WORKDIR,
    show_default=True,
    metavar="DIR",
    help="The working folder (writable; a relative SQLite path lands here).",
)
@click.option(
    "--exec",
    "executable",
    metavar="PATH",
    help="The tasksync script [default: this install's].",
)
def deploy_systemd(user: str, config: str, workdir: str, executable: str | None) -> None:
    """Print a hardened systemd unit for `tasksync run` (install it as
    /etc/systemd/system/tasksync.service). When the config file exists here, its [images]
    dir and SQLite folder are made writable too."""
    exe = executable or tasksync_executable()
    click.echo(systemd_unit(user, config, workdir, exe, writable_paths(config, workdir)), nl=False)
