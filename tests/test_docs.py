"""The docs are executable: every command is documented, every README query runs."""

from __future__ import annotations

import re

import click
import pytest

from sync.archive import readonly
from sync.archive.store import Store
from sync.cli import cli
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator

from .helpers import ROOT, sim_transport, source_for

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out += _commands(cmd, full + " ")
        else:
            out.append((full, cmd))
    return out


@pytest.mark.parametrize(("name", "cmd"), _commands(cli), ids=lambda v: str(v))
def test_every_command_has_help_and_is_in_the_readme(name: str, cmd: click.Command) -> None:
    """Each command has help text and appears in the README as `tasksync <command>`."""
    assert cmd.help, name
    assert f"tasksync {name}" in README


SQL_BLOCKS = re.findall(r"```sql\n-- (\w+)\n(.*?)```", README, re.S)


def test_readme_has_the_promised_examples() -> None:
    """The README shows the history questions the issues promise."""
    text = " ".join(sql for _, sql in SQL_BLOCKS)
    for needle in ("percentile_cont", "failed", "task_events", "SUBMITTED", "'SUCCESS', 'FAILURE'"):
        assert needle in text


def test_readme_queries_run(store: Store) -> None:
    """Every README query for this dialect (and every `any` one) runs on a real archive."""
    sim = Simulator(400, seed=5)
    src = source_for("http://sim.test")
    client = connect(src, transport=sim_transport(sim))
    pipeline.backfill(store, client, src)
    for _ in range(3):
        for i in sim.unfinished():
            sim.advance(i)
        sim.arrive(3)
        pipeline.incremental(store, client, src)
    dialect = "mysql" if store.dialect == "mariadb" else store.dialect
    ran = 0
    for kind, sql in SQL_BLOCKS:
        if kind in ("any", dialect):
            cols, rows = readonly.query_all(store.url.render_as_string(hide_password=False), sql)
            assert cols, sql
            ran += 1
            if "SUBMITTED" in sql or "failure_pct" in sql:
                assert rows, f"no rows from:\n{sql}"
    assert ran >= 4


def test_every_subpackage_is_installed() -> None:
    """A package folder missing from pyproject's list works from the checkout, fails installed."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "sync").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found, "no packages found under sync/"
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_every_test_the_readme_cites_exists() -> None:
    """A guarantee backed by a named test keeps its backing: every `test_…` the README names
    is a test function in tests/ (a rename or removal fails here, not silently in the docs)."""
    cited = set(re.findall(r"`(test_[a-z0-9_]+)`", README))
    defined = {
        m
        for path in (ROOT / "tests").glob("test_*.py")
        for m in re.findall(r"^def (test_[a-z0-9_]+)\(", path.read_text(), re.M)
    }
    assert cited, "the README names its tests"
    assert cited <= defined, sorted(cited - defined)
