"""The interface every family adapter implements (`Family`), what a family's list can
promise a walk (`Guarantees`), and the one-line summary of it (`describe`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sync.errors import BadResponse, ConfigError

if TYPE_CHECKING:
    from sync.server.client import Client
    from sync.server.pages import ServerPage

BY_IDS_PATH = "/mj/task/list-by-condition"


@dataclass(frozen=True)
class Guarantees:
    """What a family's list can promise a walk over it.

    `paged`: the list is read page by page (else as one whole list). `drift_repair`: pages
    carry a unique order key and a total, so the walker can notice items slipping over a
    page boundary and step back. `gone`: how a sweep decides that a task is gone: "walk" (a
    sound, drift-checked walk that did not see it), "whole" (the whole list, read at once, did
    not hold it), "confirm" (a complete walk did not see it and `list-by-condition` confirms
    it is no longer there) or "never". `by_ids`: `list-by-condition` re-checks unfinished
    tasks (else an incremental sync re-reads pages down to the oldest unfinished task due)."""

    paged: bool
    drift_repair: bool
    gone: str
    by_ids: bool


class Family:
    """The interface every adapter implements."""

    name = ""
    shape = "mj"  # records.SHAPES: where task objects keep the archive's fields
    guarantees = Guarantees(paged=True, drift_repair=True, gone="walk", by_ids=True)

    def page(self, client: Client, number: int, size: int, keep_body: bool) -> ServerPage:
        """Page `number`, counted from 0 whatever the family's own base."""
        raise ConfigError(f"the {self.name} family has no paged task list")

    def whole(self, client: Client) -> Iterator[list[Any]]:
        """The whole list, in batches, for a family that serves it as one stream."""
        raise ConfigError(f"the {self.name} family does not serve its whole list at once")

    def by_ids(self, client: Client, ids: list[str]) -> list[Any]:
        """`POST /mj/task/list-by-condition`: the tasks the server still has of `ids`."""
        data, _ = client.call("POST", BY_IDS_PATH, body={"ids": ids})
        if not isinstance(data, list):
            raise BadResponse(
                f"source {client.source.name}: POST {client.base}{BY_IDS_PATH}: expected a "
                f"JSON array of tasks, got {type(data).__name__}"
            )
        return data

    def state(self) -> Any:
        """What this adapter learned from the server (crosses to the fetch process)."""
        return None

    def restore(self, state: Any) -> None:
        """Take over what another instance learned (see `state`)."""

    def notes(self) -> list[str]:
        """What the last run should say about this family's list (once per run)."""
        return []

    # A family that sends its credential its own way defines
    # `auth(self, token: str, src: SourceSettings) -> dict[str, str]`; the client sends the
    # configured `auth_header` otherwise.


def describe(family: Family) -> str:
    """One line on what a family's list can promise (for `config check` and the run line)."""
    g = family.guarantees
    gone = {
        "walk": "tasks are marked gone after a sound sweep",
        "whole": "tasks are marked gone when the whole list no longer holds them",
        "confirm": "tasks a sweep missed are marked gone once list-by-condition confirms it",
        "never": "nothing is ever marked gone",
    }[g.gone]
    repair = "drift is repaired" if g.drift_repair else "no drift repair"
    return f"{family.name}: {repair}; {gone}"


def tasks_of(data: Any) -> list[Any]:
    """The task list inside a page reply of any family (its shape was checked when it was
    first read): plus's `content`, trueai's `list`, new-api's `data.items` or `data`."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("content", "list"):
            if isinstance(data.get(key), list):
                found: list[Any] = data[key]
                return found
        inner = data.get("data")
        if isinstance(inner, list):
            return inner
        if isinstance(inner, dict) and isinstance(inner.get("items"), list):
            items: list[Any] = inner["items"]
            return items
    raise BadResponse("a page reply without a task list")
