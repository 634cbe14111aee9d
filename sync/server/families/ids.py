"""Relays with no task list at all (new-api and one-api style gateways, many resellers): only
`POST /mj/task/list-by-condition` and `GET /mj/task/{id}/fetch`. Unknown paths answer HTTP 200
with the dashboard's web page. tasksync refreshes the ids it is given (`--ids-from`, or the
source's `ids_query` over another table in the archive's database) and the unfinished tasks it
has, with the same change detection and events; nothing is ever marked gone."""

from __future__ import annotations

from sync.server.families.base import Family, Guarantees

NO_LIST = (
    "this server has no task list (a relay: only list-by-condition); give tasksync the ids to "
    "archive with --ids-from FILE or the source's ids_query"
)


class IdsOnly(Family):
    name = "ids"
    guarantees = Guarantees(paged=False, drift_repair=False, gone="never", by_ids=True)
