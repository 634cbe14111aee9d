"""new-api / one-api relays (QuantumNous/new-api): the dashboard's task list,
`GET /api/mj/self` (a user's own tasks) or `GET /api/mj/` (an admin's view of all), with a
dashboard access token in `Authorization` and the user's id in `New-Api-User`.

Replies are `{"success", "data": {"items", "total", "page", "page_size"}}`, items ordered by
the database row's `id` (newest first), pages counted from 1; `p=0` is read as 1, so the first
request asks for `p=0` and the reply's `page` tells which counting the server uses (it never
fetches page 1 twice). Older versions count from 0 and answer with `data` as a bare array and
no total: handled, with no drift repair and nothing marked gone. Items are snake_case
database rows: the task's id is `mj_id`, `buttons`, `properties` and `video_urls` are JSON
inside strings, and unset values are "" and 0 rather than null (records.NEWAPI maps them).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sync.errors import BadResponse, ConfigError, printable
from sync.server.families.base import Family, Guarantees
from sync.server.pages import ServerPage, count

if TYPE_CHECKING:
    from sync.config import SourceSettings
    from sync.server.client import Client


class NewAPI(Family):
    """Row ids are unique and ordered, with a total: drift is repaired and a sound sweep marks
    tasks gone (not on old versions without a total). There is no list-by-condition with a
    dashboard token: an incremental sync re-reads pages down to the oldest unfinished task due
    for a re-check instead."""

    name = "newapi"
    shape = "newapi"
    guarantees = Guarantees(paged=True, drift_repair=True, gone="walk", by_ids=False)

    def __init__(self) -> None:
        self.base: int | None = None  # 1 for current versions, 0 for old ones, once known
        self.bare = False  # an old version's bare array: no total

    def auth(self, token: str, src: SourceSettings) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}"}
        if src.newapi_user is not None:
            headers["New-Api-User"] = str(src.newapi_user)
        return headers

    def state(self) -> Any:
        return (self.base, self.bare)

    def restore(self, state: Any) -> None:
        self.base, self.bare = state

    def notes(self) -> list[str]:
        if self.bare:
            return ["an older new-api: pages without a total, so no drift repair and no gone"]
        return []

    def by_ids(self, client: Client, ids: list[str]) -> list[Any]:
        raise ConfigError("a new-api dashboard token cannot look tasks up by id")

    def page(self, client: Client, number: int, size: int, keep_body: bool) -> ServerPage:
        if self.base is None and number > 0:
            self.page(client, 0, size, False)  # learn how the server counts pages first
        path = "/api/mj/" if client.source.newapi_scope == "admin" else "/api/mj/self"
        p = number if self.base in (None, 0) else number + 1
        data, raw = client.call("GET", path, params={"p": p, "page_size": size})
        where = f"source {client.source.name}: GET {client.base}{path}"
        page = self._parse(data, number, size, where)
        if self.base is None:
            # The reply did not say how it counts pages (no `page`): does p=1 give the same
            # page as p=0? Guessing wrong would skip a page, and a sweep mark its tasks gone.
            again, _ = client.call("GET", path, params={"p": 1, "page_size": size})
            second = self._parse(again, number, size, where)
            self.base = 1 if second.walk_keys == page.walk_keys and page.walk_keys else 0
        return replace(page, body=raw) if keep_body else page

    def _parse(self, data: Any, number: int, size: int, where: str) -> ServerPage:
        inner = data.get("data") if isinstance(data, dict) else None
        if isinstance(inner, dict) and isinstance(inner.get("items"), list):
            items: list[Any] = inner["items"]
            total = count(inner.get("total"))
            served = count(inner.get("page_size")) or size
            if self.base is None and count(inner.get("page")) in (0, 1):
                self.base = count(inner.get("page"))  # None: unknown, learnt in `page`
        elif isinstance(inner, list):  # an older version: 0-based, no total
            items, total, served = inner, None, len(inner) or size
            self.base = 0
            self.bare = True
        else:
            got = type(data).__name__ if not isinstance(data, dict) else printable(sorted(data)[:6])
            raise BadResponse(f"{where}: expected new-api's {{success, data}}, got {got}")
        # The walk's order keys are the rows' ids; a row without one (a trimmed-down relay)
        # is keyed by its task id instead, so pages still differ to the runaway guard.
        keys = [
            str(row["id"] if row.get("id") is not None else row.get("mj_id"))
            if isinstance(row, dict)
            else ""
            for row in items
        ]
        last = not items or (total is not None and (number + 1) * served >= total)
        return ServerPage(
            number=number,
            size=served,
            tasks=items,
            total=total,
            last=last,
            shape="newapi",
            walk_keys=keys,
        )
