"""`api = "auto"`: which family is this server? Read-only probes in a safe order, each judged
by the shape of its JSON (never by the status alone: a new-api gateway answers any unknown path
with HTTP 200 and its dashboard page):

1. `POST /mj/task/query` (one task): a Spring Page                      -> plus
2. `POST /mj/admin/tasks` (one task): `{list, pagination}`              -> trueai
3. `GET /api/mj/self?p=0&page_size=1`: `{success, data: {items}}`       -> newapi
4. `GET /mj/task/list`: a JSON array                                    -> novicezk
   (trueai's own `/mj/task/list` lists only its newest 100: recognised by its fields, and
   refused with the reason: its full list needs an admin's token)
5. `POST /mj/task/list-by-condition` with no ids: a JSON array          -> ids (a relay)

No probe writes anything: only list endpoints are asked, and no id is submitted, cancelled or
deleted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sync.errors import (
    AuthRefused,
    ConfigError,
    ServerBusy,
    ServerError,
    ServerUnreachable,
    TasksyncError,
)
from sync.server.families.adapters import named
from sync.server.families.base import Family

if TYPE_CHECKING:
    from sync.server.client import Client

# Fields only trueai's task objects carry (System.Text.Json writes computed properties too).
TRUEAI_MARKS = {"displays", "isCompleted", "useTime", "botType", "partnerTaskInfo"}


def _try(
    client: Client, family: Family, failures: list[TasksyncError], method: str, path: str, **kw: Any
) -> Any:
    """One probe, as `family` would send it: the parsed JSON, or None (the reason kept)."""
    saved = client.family
    client.family = family
    try:
        data, _ = client.call(method, path, probe=True, **kw)
        return data
    except ServerUnreachable:
        raise  # nothing to tell from silence: say so at once
    except ServerBusy as exc:
        # A server having a bad moment says nothing about its family: moving on to the next
        # probe could settle on the wrong one, and that answer is remembered.
        raise ServerBusy(
            f"source {client.source.name}: finding out the server's family: {exc}; tried again "
            'on the next run (or set api = "plus", "trueai", ... in the config)'
        ) from None
    except (AuthRefused, ServerError) as exc:
        failures.append(exc)
        return None
    finally:
        client.family = saved


def _family(api: str) -> Family:
    found = named(api)
    assert found is not None
    return found


def probe(client: Client) -> tuple[Family, str]:
    """The family this server is, and the probe that showed it; or a one-line error saying
    what the server is instead (no task list, a web page, not a Midjourney proxy)."""
    name = client.source.name
    failures: list[TasksyncError] = []

    plus = _family("plus")
    body: Any = {"pageNumber": 0, "pageSize": 1}
    got = _try(client, plus, failures, "POST", "/mj/task/query", body=body)
    if isinstance(got, dict) and isinstance(got.get("content"), list):
        return plus, "POST /mj/task/query answered with a Spring Page"

    trueai = _family("trueai")
    body = {"pagination": {"current": 1, "pageSize": 1}, "sort": {}, "search": {}}
    got = _try(client, trueai, failures, "POST", "/mj/admin/tasks", body=body)
    if isinstance(got, dict) and isinstance(got.get("list"), list) and "pagination" in got:
        return trueai, "POST /mj/admin/tasks answered with trueai's {list, pagination}"

    newapi = _family("newapi")
    got = _try(client, newapi, failures, "GET", "/api/mj/self", params={"p": 0, "page_size": 1})
    inner = got.get("data") if isinstance(got, dict) else None
    items = inner.get("items") if isinstance(inner, dict) else inner
    if isinstance(items, list):
        return newapi, "GET /api/mj/self answered with new-api's {success, data}"

    novicezk = _family("novicezk")
    got = _try(client, novicezk, failures, "GET", "/mj/task/list")
    if isinstance(got, list):
        if any(isinstance(t, dict) and TRUEAI_MARKS & set(t) for t in got[:5]):
            raise ConfigError(
                f"source {name}: this is a trueai server, but its admin list "
                "(POST /mj/admin/tasks) refused the token; trueai lists all its tasks only to "
                "an admin's token"
            )
        return novicezk, "GET /mj/task/list answered with a JSON array of every task"

    got = _try(
        client, _family("ids"), failures, "POST", "/mj/task/list-by-condition", body={"ids": []}
    )
    if isinstance(got, list):
        raise ConfigError(
            f"source {name}: this server has no task list; it answers list-by-condition only "
            '(a relay). Set api = "ids" and give tasksync the ids (--ids-from FILE or ids_query)'
        )

    refused = [f for f in failures if isinstance(f, AuthRefused)]
    if refused and len(refused) == len(failures):
        raise AuthRefused(f"source {name}: every probe was refused: {refused[0]}")
    if any("HTML page" in str(f) for f in failures):
        raise ConfigError(
            f"source {name}: no Midjourney-proxy task list at {client.base}: it answered with "
            "a web page (a wrong base_url, or a proxy in the way?)"
        )
    first = failures[0] if failures else "no reply fitted"
    raise ConfigError(
        f"source {name}: {client.base} is not a Midjourney-proxy server tasksync knows "
        f"(plus, trueai, novicezk, newapi, or a relay): {first}"
    )


def detect(client: Client) -> tuple[Family, str]:
    """The family this server is (see `probe`), found read-only, and what showed it."""
    return probe(client)


def resolve(client: Client, remembered: str | None) -> tuple[Family, str | None]:
    """The source's family, handed to the client: as configured (the client has it
    already), else as remembered from an earlier probe, else found now by probing. The
    evidence comes back only when it was probed now (for the caller to remember)."""
    evidence = None
    if client.family is None:
        client.family = named(remembered) if remembered else None
    if client.family is None:
        client.family, evidence = detect(client)
    return client.family, evidence
