"""trueai-org/midjourney-proxy: the admin list `POST /mj/admin/tasks`, pages counted from 1,
at most 100 tasks each, sorted by submit time (newest first) with no tie-breaker, and a total.

The token goes verbatim in `Authorization` (no "Bearer"), or in `Mj-Api-Secret`; only one of
them is sent, since a wrong `Authorization` overrides a right `Mj-Api-Secret`. Business errors
come as HTTP 200 `{"success": false}`. In demo mode (or for a caller who is not an admin,
where the server allows it) pages are silently cut to 10 tasks and no page past the tenth is
served: detected, and said.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sync.errors import BadResponse, ServerRefused, printable
from sync.server.families.base import Family, Guarantees
from sync.server.pages import ServerPage, count

if TYPE_CHECKING:
    from sync.config import SourceSettings
    from sync.server.client import Client

ADMIN_TASKS = "/mj/admin/tasks"
DEMO_SIZE, DEMO_PAGES = 10, 10


class TrueAI(Family):
    """Submit times tie, so the order has no unique key: the walk cannot prove a task gone by
    itself. A sweep's candidates are confirmed through list-by-condition instead."""

    name = "trueai"
    guarantees = Guarantees(paged=True, drift_repair=False, gone="confirm", by_ids=True)

    def __init__(self) -> None:
        self.demo = False

    def auth(self, token: str, src: SourceSettings) -> dict[str, str]:
        if src.auth_header == "Authorization":
            return {"Authorization": token}
        return {"Mj-Api-Secret": token}

    def state(self) -> Any:
        return self.demo

    def restore(self, state: Any) -> None:
        self.demo = bool(state)

    def notes(self) -> list[str]:
        if not self.demo:
            return []
        return [
            "trueai demo mode: pages are cut to 10 tasks and nothing past the 10th page is "
            "served, so only the newest 100 tasks can be read (use an admin's token)"
        ]

    def page(self, client: Client, number: int, size: int, keep_body: bool) -> ServerPage:
        where = f"source {client.source.name}: POST {client.base}{ADMIN_TASKS}"
        if self.demo and number >= DEMO_PAGES:
            raise ServerRefused(
                f"{where}: the server is in trueai's demo mode (or the token is not an admin's): "
                f"it serves only the first {DEMO_PAGES} pages of {DEMO_SIZE} tasks; use an "
                "admin's token to archive more"
            )
        body = {
            "pagination": {"current": number + 1, "pageSize": size},
            "sort": {"predicate": "", "reverse": True},
            "search": {},
        }
        data, raw = client.call("POST", ADMIN_TASKS, body=body)
        page = parse_admin_page(data, number, size, where)
        if page.size == DEMO_SIZE < size:
            self.demo = True
        return replace(page, body=raw) if keep_body else page


def parse_admin_page(data: Any, number: int, size: int, where: str) -> ServerPage:
    """`{"list": [...], "pagination": {"current", "pageSize", "total", "pageCount"}}`."""
    pagination = data.get("pagination") if isinstance(data, dict) else None
    if not isinstance(pagination, dict) or not isinstance(data.get("list"), list):
        got = type(data).__name__ if not isinstance(data, dict) else printable(sorted(data)[:6])
        raise BadResponse(f"{where}: expected trueai's {{list, pagination}}, got {got}")
    tasks: list[Any] = data["list"]
    total = count(pagination.get("total"))
    pages = count(pagination.get("pageCount"))
    served = count(pagination.get("pageSize")) or size
    last = not tasks or (pages is not None and number + 1 >= pages)
    return ServerPage(number=number, size=served, tasks=tasks, total=total, last=last)
