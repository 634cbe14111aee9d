"""One adapter per Midjourney-proxy family, behind one small interface (`Family`).

| family   | the task list                                  | module     |
| -------- | ---------------------------------------------- | ---------- |
| plus     | `POST /mj/task/query`, a Spring Page from 0     | `plus`     |
| trueai   | `POST /mj/admin/tasks`, pages from 1 (admin)    | `trueai`   |
| novicezk | `GET /mj/task/list`, the whole list at once     | `novicezk` |
| newapi   | `GET /api/mj/self` (or `/api/mj/`), dashboard   | `newapi`   |
| ids      | none: `list-by-condition` only (relays)         | `ids`      |

An adapter makes its requests through the source's `Client` (the one door to the network)
and says what its family guarantees (`Guarantees`), so the pipeline knows what a walk can
promise: whether drift can be repaired, how gone tasks are decided, how unfinished tasks are
re-checked. `detect` (for `api = "auto"`) probes the families in a safe order, read-only,
judging by the shape of the JSON, never by the status alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sync.errors import BadResponse, ConfigError

if TYPE_CHECKING:
    from sync.config import SourceSettings
    from sync.server.client import Client, ServerPage

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


def auth_headers(family: Family | None, token: str | None, src: SourceSettings) -> dict[str, str]:
    """The credential headers of a request: the family's own way, else the configured one."""
    if not token:
        return {}
    own = getattr(family, "auth", None)
    if own is not None:
        headers: dict[str, str] = own(token, src)
        return headers
    if src.auth_header == "Authorization":
        return {"Authorization": f"Bearer {token}"}
    return {"mj-api-secret": token}


def named(api: str) -> Family | None:
    """A fresh adapter for a configured `api` (None for "auto": detection decides)."""
    from sync.server.families import ids, newapi, novicezk, plus, trueai

    kinds: dict[str, type[Family]] = {
        "plus": plus.Plus,
        "trueai": trueai.TrueAI,
        "novicezk": novicezk.NoviceZK,
        "newapi": newapi.NewAPI,
        "ids": ids.IdsOnly,
    }
    if api == "auto":
        return None
    return kinds[api]()


FAMILIES = ("plus", "trueai", "novicezk", "newapi", "ids")


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


def detect(client: Client) -> tuple[Family, str]:
    """Probe the families (see sync.families.probing), read-only; the adapter found and what
    showed it."""
    from sync.server.families.probing import probe

    return probe(client)


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
