"""The ids a relay's run refreshes (a server with no list, `api = "ids"`): those given in a
file (`--ids-from`), or else the first column of the source's `ids_query`, run read-only
against the archive's database."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sync.archive import readonly
from sync.archive.store import Store
from sync.config import SourceSettings
from sync.errors import TasksyncError
from sync.files import read_small_file


def wanted_ids(store: Store, src: SourceSettings, given: Iterable[str]) -> list[str]:
    """The ids a relay's run refreshes: those given (`--ids-from`), or else the first column
    of the source's `ids_query`, run read-only against the archive's database."""
    out = [i.strip() for i in given if i.strip()]
    if out or not src.ids_query:
        return out
    url = store.url.render_as_string(hide_password=False)
    try:
        _cols, rows = readonly.query_all(url, src.ids_query)
    except TasksyncError as exc:  # same kind and exit code, saying where it came from
        raise type(exc)(f"source {src.name!r}: ids_query: {exc}") from None
    return [str(r[0]) for r in rows if r and r[0] is not None and str(r[0]).strip()]


def read_ids_file(path: Path) -> list[str]:
    """One id per line (blank lines and #-comments skipped); a regular file of at most 64 MB."""
    lines = read_small_file(path, 64 << 20, f"--ids-from {path}").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
