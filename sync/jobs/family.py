"""Which family a source's server is, for a run: as configured, else as remembered in the
archive from an earlier probe (`api = "auto"`), else found now by probing, read-only (and
then remembered, so the next run does not probe again)."""

from __future__ import annotations

import logging
from datetime import datetime

from sync.archive import sources
from sync.archive.store import Store
from sync.config import SourceSettings
from sync.server.client import Client
from sync.server.families.base import Family, describe
from sync.server.families.probing import resolve

log = logging.getLogger("tasksync.pipeline")


def family_of(
    store: Store, client: Client, src: SourceSettings, now: datetime, *, remember: bool = True
) -> Family:
    """The source's family adapter: as configured, or for `api = "auto"` as remembered in the
    archive, or found now by probing (and then remembered, unless `remember` is off)."""
    if client.family is not None:
        return client.family
    found, evidence = resolve(client, sources.remembered(store, src.name))
    if evidence is not None:
        if remember:
            sources.remember(store, src.name, found.name, evidence, now)
        log.info("source %s: the server is %s (%s)", src.name, describe(found), evidence)
    return found
