"""The families remembered per source (`source_apis`): what probing found for a source with
`api = "auto"`, so later runs need not probe again, and forgetting it when a reply stops
fitting."""

from __future__ import annotations

import contextlib
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy import exc as sa_exc

from sync.archive.engine import Database
from sync.archive.models import SourceApi


def remembered(db: Database, source: str) -> str | None:
    """The family probing found for a source (`api = "auto"`), if remembered."""
    with db.engine.connect() as conn:
        return conn.execute(select(SourceApi.api).where(SourceApi.source == source)).scalar()


def remember(db: Database, source: str, api: str, evidence: str, now: datetime) -> None:
    """Keep what probing found (and what showed it) for the source's later runs."""
    with db.write() as conn:
        conn.execute(delete(SourceApi).where(SourceApi.source == source))
        conn.execute(
            insert(SourceApi).values(
                source=source, api=api, evidence=evidence[:255], detected_at=now
            )
        )


def forget(db: Database, source: str) -> None:
    """A reply stopped fitting the remembered family: probe again next time."""
    with contextlib.suppress(sa_exc.SQLAlchemyError), db.write() as conn:
        conn.execute(delete(SourceApi).where(SourceApi.source == source))
