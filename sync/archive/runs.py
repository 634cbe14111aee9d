"""What a run did: one type for its counts, used alike by the store (what a save did), the
pipeline (a run's report), the ledger (`sync_runs` has a column per count) and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class RunCounts:
    """The counters of a run; each is a column of `sync_runs`."""

    pages: int = 0
    requests: int = 0
    retries: int = 0
    tasks_seen: int = 0
    inserted: int = 0
    changed: int = 0
    unchanged: int = 0
    gone: int = 0
    returned: int = 0
    rejected: int = 0

    def add(self, other: RunCounts) -> None:
        """Add another's counts to these (a page's save to its run's report)."""
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def counts(self) -> dict[str, int]:
        """The counters alone, by column name."""
        return {name: getattr(self, name) for name in COUNTERS}


COUNTERS = tuple(f.name for f in fields(RunCounts))


@dataclass
class SaveResult(RunCounts):
    """What one save did (or, in a dry run, would do): counts, plus the status of each task
    it saw, which of them were new, and which were new, changed or returned (`moved`)."""

    statuses: dict[str, str | None] = field(default_factory=dict)
    new_ids: set[str] = field(default_factory=set)
    moved: set[str] = field(default_factory=set)


@dataclass
class RunReport(RunCounts):
    """One backfill, sync or sweep: its counts and how it ended (the `sync_runs` row, the run
    log line, the metrics)."""

    source: str = ""
    kind: str = ""
    api: str = ""
    outcome: str = "running"
    run_id: int | None = None
    duration_s: float = 0.0
    error: str | None = None
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
