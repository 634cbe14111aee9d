"""The docs are executable: every command is documented, every config key is, every example
query on the archive page runs, every test a page cites exists, and the README's links lead
somewhere. The README is the front door; the rest is under docs/ (built by mkdocs.yml)."""

from __future__ import annotations

import re
import tomllib
import typing
import xml.etree.ElementTree as ET

import click
import pytest
import sqlalchemy
from cogapp import Cog
from pydantic import BaseModel

from sync.archive import readonly
from sync.archive.store import Store
from sync.cli import cli
from sync.config import Settings
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator

from .helpers import ROOT, sim_transport, source_for

DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLI_PAGE = DOCS / "cli.md"
CONFIG_PAGE = DOCS / "configuration.md"
ARCHIVE_PAGE = DOCS / "archive.md"


def _pages() -> dict[str, str]:
    """README.md and every page under docs/, by path relative to the checkout."""
    pages = {"README.md": README}
    for path in sorted(DOCS.rglob("*.md")):
        pages[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    return pages


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name, cmd in group.commands.items():
        full = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out += _commands(cmd, full + " ")
        else:
            out.append((full, cmd))
    return out


COMMANDS = _commands(cli)
# The README's command table: rows whose first cell is `tasksync ...`.
README_ROWS = re.findall(r"^\| `tasksync ([^`]*)` \|", README, re.M)


def _row_for(name: str) -> list[str]:
    """The README table rows that document `tasksync NAME` (its synopsis may follow)."""
    return [row for row in README_ROWS if row == name or row.startswith(name + " ")]


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=lambda v: str(v))
def test_every_command_has_help_and_is_in_the_readme_and_the_cli_reference(
    name: str, cmd: click.Command
) -> None:
    """Each command has help text, one row in the README's command table, and a section in
    the CLI reference."""
    assert cmd.help, name
    assert len(_row_for(name)) == 1, f"`tasksync {name}` needs one row in the README's table"
    assert f"\n## tasksync {name}\n" in CLI_PAGE.read_text(encoding="utf-8"), name


def test_readme_command_table_names_only_real_commands() -> None:
    """Every row of the README's command table is a command tasksync has (a removed or
    renamed command does not leave its row behind)."""
    names = {name for name, _ in COMMANDS}
    assert README_ROWS, "the README has a command table"
    stale = [
        row for row in README_ROWS if not any(row == n or row.startswith(n + " ") for n in names)
    ]
    assert stale == []


def test_cli_reference_is_current() -> None:
    """docs/cli.md is what cog generates from today's `--help` texts: a changed option or
    command fails here until the page is regenerated."""
    committed = CLI_PAGE.read_text(encoding="utf-8")
    fresh = Cog().process_string(committed, fname=str(CLI_PAGE))
    assert fresh == committed, "docs/cli.md is stale: run `cog -r docs/cli.md`"


def _model_of(annotation: typing.Any) -> tuple[type[BaseModel] | None, bool]:
    """The settings model behind a field's annotation, and whether it is a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args and issubclass(args[0], BaseModel):
        return args[0], True
    return None, False


def _config_keys() -> set[str]:
    """Every key the config accepts, as `section.key` (`sources[].key` for the list)."""
    keys: set[str] = set()
    for section, field in Settings.model_fields.items():
        model, is_list = _model_of(field.annotation)
        if model is None:
            continue  # not a TOML section (`path`, where the file was read from)
        prefix = f"{section}[]" if is_list else section
        keys |= {f"{prefix}.{key}" for key in model.model_fields}
    return keys


def test_config_keys_are_found() -> None:
    """The key list the config tests below check against has every section's keys."""
    keys = _config_keys()
    sections = {key.split(".")[0] for key in keys}
    assert sections == {"database", "sources[]", "schedule", "metrics", "query", "images"}
    assert {"database.url", "sources[].base_url", "schedule.sync", "images.allow_hosts"} <= keys


def test_every_config_key_is_on_the_configuration_page() -> None:
    """docs/configuration.md has one row for every key the config accepts, and no row for a
    key it does not."""
    rows = re.findall(
        r"^\| `([a-z_]+(?:\[\])?\.[a-z_]+)` \|", CONFIG_PAGE.read_text(encoding="utf-8"), re.M
    )
    assert sorted(rows) == sorted(set(rows)), "a key has two rows"
    keys = _config_keys()
    assert keys - set(rows) == set(), "document these keys in docs/configuration.md"
    assert set(rows) - keys == set(), "docs/configuration.md documents keys that do not exist"


def test_every_config_key_is_in_the_example() -> None:
    """config.example.toml shows every key, set or commented out, in its own section, and
    no key that does not exist (a commented-out key is never loaded, so only this checks it)."""
    shown: set[str] = set()
    section = ""
    for line in (ROOT / "config.example.toml").read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[\[?([a-z_]+)\]\]?", line):
            section = f"{m[1]}[]" if line.startswith("[[") else m[1]
        elif m := re.match(r"^#? ?([a-z_]+) = ", line):
            shown.add(f"{section}.{m[1]}")
    keys = _config_keys()
    assert keys - shown == set(), "show these keys in config.example.toml"
    assert shown - keys == set(), "config.example.toml shows keys that do not exist"


ARCHIVE = ARCHIVE_PAGE.read_text(encoding="utf-8")
SQL_BLOCKS = re.findall(r"```sql\n-- (\w+)\n(.*?)```", ARCHIVE, re.S)


def test_archive_page_has_the_promised_examples() -> None:
    """The archive page shows the history questions the issues promise."""
    text = " ".join(sql for _, sql in SQL_BLOCKS)
    for needle in ("percentile_cont", "failed", "task_events", "SUBMITTED", "'SUCCESS', 'FAILURE'"):
        assert needle in text


def test_archive_page_queries_run(store: Store) -> None:
    """Every query on the archive page for this dialect (and every `any` one) runs on a real
    archive."""
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
    assert ran == {"sqlite": 6, "postgresql": 6, "mysql": 4}[dialect]


def test_every_table_and_view_is_on_the_archive_page(sqlite_store: Store) -> None:
    """Each table and view a migrated archive has is named on the archive page."""
    inspector = sqlalchemy.inspect(sqlite_store.engine)
    names = set(inspector.get_table_names()) | set(inspector.get_view_names())
    names.discard("alembic_version")
    assert {"tasks", "task_events", "daily_stats"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in ARCHIVE)
    assert missing == [], "name these on docs/archive.md"


def test_every_subpackage_is_installed() -> None:
    """A package folder missing from pyproject's list works from the checkout, fails installed."""
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


def test_every_test_the_docs_cite_exists() -> None:
    """A guarantee backed by a named test keeps its backing: every `test_…` the README or a
    docs page names is a test function in tests/, and every `tests/….py` a file (a rename or
    removal fails here, not silently in the docs)."""
    text = "\n".join(_pages().values())
    cited = set(re.findall(r"`(test_[a-z0-9_]+)`", text))
    defined = {
        m
        for path in (ROOT / "tests").glob("test_*.py")
        for m in re.findall(r"^def (test_[a-z0-9_]+)\(", path.read_text(), re.M)
    }
    assert len(cited) >= 20, "the guarantees name their tests"
    assert cited <= defined, sorted(cited - defined)
    files = set(re.findall(r"`(tests/[a-z0-9_/]+\.py)`", text))
    assert files, "the docs name test files"
    assert sorted(f for f in files if not (ROOT / f).is_file()) == []


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (lowercase, punctuation dropped, each
    space a hyphen)."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    body = re.sub(r"```.*?```", "", markdown, flags=re.S)  # a `# comment` in a code block
    return {_github_slug(h) for h in re.findall(r"^#{1,6} (.+)$", body, re.M)}


def test_readme_links_lead_somewhere() -> None:
    """Every relative link and image in the README names a file that exists and, with an
    `#anchor`, a heading of that file; the picture is well-formed SVG."""
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(local) >= 20, "the README links into the docs"
    broken = []
    for link in local:
        path_part, _, anchor = link.partition("#")
        target = ROOT / path_part if path_part else ROOT / "README.md"
        found = target.is_file() and (
            not anchor or anchor in _anchors(target.read_text(encoding="utf-8"))
        )
        if not found:
            broken.append(link)
        elif target.suffix == ".svg":
            ET.parse(target)  # raises on a malformed picture
    assert broken == []


def _block_after(heading: str, text: str) -> list[str]:
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_ci_runs_the_readme_test_command_exactly() -> None:
    """.ci/run runs the README's test command (the quick start's second one) as it is
    written, after the virtual environment it makes itself."""
    command = _block_after("Quick start", README)[1]
    prefix = "python3 -m venv .venv && . .venv/bin/activate && "
    assert command.startswith(prefix)
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command.removeprefix(prefix) in ci_lines


def test_readme_stays_a_front_door() -> None:
    """The README is the front door: a few hundred lines at most; the rest is docs/ pages."""
    lines = README.count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move reference text to a page in docs/"


def test_every_docs_page_is_in_the_site() -> None:
    """Each page under docs/ is in mkdocs.yml's nav (MkDocs only warns about one that is
    not; strict mode makes that fail, and this says which)."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    in_nav = set(re.findall(r":\s+(\S+\.md)\s*$", config, re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == in_nav
    assert re.search(r"^strict: true$", config, re.M)
