"""midjourney-proxy-plus (and resellers that front it): `POST /mj/task/query` answers with a
Spring Data Page, counted from 0, sorted by id (newest first) on request, with totals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sync.errors import BadResponse, printable
from sync.server.families.base import Family, Guarantees
from sync.server.pages import ServerPage, count

if TYPE_CHECKING:
    from sync.server.client import Client

QUERY_PATH = "/mj/task/query"


class Plus(Family):
    """Ids are unique and the list is sorted by them, with a total on every page: the walker
    repairs drift, and a sound sweep decides what is gone."""

    name = "plus"
    guarantees = Guarantees(paged=True, drift_repair=True, gone="walk", by_ids=True)

    def page(self, client: Client, number: int, size: int, keep_body: bool) -> ServerPage:
        body = {"pageNumber": number, "pageSize": size, "sort": "id,desc"}
        data, raw = client.call("POST", QUERY_PATH, body=body)
        where = f"source {client.source.name}: POST {client.base}{QUERY_PATH}"
        page = parse_page(data, number, size, where)
        if keep_body:
            from dataclasses import replace

            page = replace(page, body=raw)
        return page


def parse_page(data: Any, number: int, size: int, where: str) -> ServerPage:
    """A Spring `Page` in the classic flat shape or the nested `{content, page{...}}` shape."""
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        got = (
            type(data).__name__
            if not isinstance(data, dict)
            else f"keys {printable(sorted(map(str, data))[:6], 120)}"
        )
        raise BadResponse(f"{where}: expected a Spring Page with a 'content' list, got {got}")
    tasks: list[Any] = data["content"]
    nested = data.get("page")
    if isinstance(nested, dict):
        total = count(nested.get("totalElements"))
        pages = count(nested.get("totalPages"))
        num = count(nested.get("number"))
        last = not tasks or (pages is not None and num is not None and num >= pages - 1)
    else:
        total = count(data.get("totalElements"))
        flag = data.get("last")
        last = not tasks or flag is True
        if not isinstance(flag, bool):
            pages = count(data.get("totalPages"))
            last = last or (pages is not None and number >= pages - 1)
    return ServerPage(number=number, size=size, tasks=tasks, total=total, last=bool(last))
