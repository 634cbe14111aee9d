"""What every command is handed: the settings, the global flags, the store and the clients
built from them (`App`), and the click decorator that passes it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from sync.config import Settings, load
from sync.console import ProgressDisplay, log_run, stop_on_signals
from sync.errors import TasksyncError

if TYPE_CHECKING:
    from sync.archive.runs import RunReport
    from sync.archive.store import Store

log = logging.getLogger("tasksync")


@dataclass
class App:
    """What every command needs: the settings (loaded on first use), the global flags, and
    the store and clients built from them."""

    config_path: str | None
    db_url: str | None
    verbose: int
    log_format: str
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load(self.config_path, self.db_url)
        return self._settings

    def store(self, *, migrate_check: bool = True, create: bool = False) -> Store:
        """The archive, connected (and, unless told otherwise, at the newest revision);
        closed when the command ends. Only `create` (db upgrade) may make a new SQLite file."""
        from sync.archive import schema
        from sync.archive.store import Store

        url = self.settings.database.url
        if not create:
            schema.require_sqlite_file(url)  # a mistyped path is not created empty
        store = Store(url)
        click.get_current_context().call_on_close(store.dispose)
        store.ping()
        if migrate_check:
            schema.require_current(store)
        return store

    def run_sources(
        self,
        name: str | None,
        run: Callable[..., RunReport],
        *,
        progress: str | None = None,
        **options: Any,
    ) -> None:
        """`run(store, client, src, stop=..., **options)` for each selected source, one log
        line per run; with several sources a failing one is logged and the others go on,
        and the exit code is the worst. `progress` labels a progress bar per source."""
        from sync.server.client import connect

        sources = self.settings.source(name)
        store = self.store()
        worst: TasksyncError | None = None
        for src in sources:
            client = connect(src)
            try:
                with stop_on_signals() as stop:
                    if progress:
                        with ProgressDisplay(f"{progress} {src.name}") as bar:
                            report = run(store, client, src, stop=stop, progress=bar, **options)
                    else:
                        report = run(store, client, src, stop=stop, **options)
                log_run(report)
            except TasksyncError as exc:
                if len(sources) == 1:
                    raise
                text = str(exc)
                named = text.startswith((f"source {src.name}", f"source {src.name!r}"))
                log.error("%s", text if named else f"source {src.name}: {text}")
                worst = exc if worst is None or exc.exit_code > worst.exit_code else worst
            finally:
                client.close()
        if worst is not None:
            raise worst


pass_app = click.make_pass_decorator(App)
