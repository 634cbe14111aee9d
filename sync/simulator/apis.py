"""How the simulator answers as each server family: endpoints, envelopes, task shapes and the
quirks `sync.server.families` must survive (the README's "Server families" describes the
real servers these stand for).

- plus: `POST /mj/task/query`, a Spring Page from 0 (`nested`: the nested page shape).
- trueai: `POST /mj/admin/tasks`, pages from 1, silently capped at 100 (in demo mode at 10,
  and no page past the 10th); the token compared verbatim; plain-text 401/403; extra and
  computed fields; a cancel is FAILURE "取消任务"; its `/mj/task/list` holds the newest 100.
- novicezk: `GET /mj/task/list`, the whole list in one array; a 401 with an empty body;
  Spring's JSON 404 under /mj, Tomcat's HTML 404 elsewhere.
- newapi: `GET /api/mj/self`, pages from 1 (`p=0` read as 1), snake_case rows with JSON inside
  strings and "" or 0 for unset values, `New-Api-User`, HTML for unknown paths; `old`: pages
  from 0, a bare array without a total, a fixed page size, times in seconds.
- ids: no list, only `list-by-condition`; HTTP 200 HTML for every other path.

The simulator keeps every task in the plus shape (`Simulator.task`); each family serves it in
its own (`serve`), and tests compare the archive with what was served (`Simulator.truth`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from sync.server.families import FAMILIES
from sync.simulator.server import Reply

if TYPE_CHECKING:
    from sync.simulator.core import Simulator

SPA = b'<!doctype html><html><head><title>New API</title></head><body><div id="root"></div>'
TOMCAT_404 = b"<!doctype html><html><head><title>HTTP Status 404 - Not Found</title></head></html>"
BY_IDS = ("/mj/task/list-by-condition", "/mj/task/list-by-ids")


def _reply(
    status: int, doc: Any = None, ctype: str = "application/json", raw: bytes = b""
) -> Reply:
    return Reply(status, orjson.dumps(doc) if doc is not None else raw, ctype)


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class Api:
    """The plus family (and the base the others adapt)."""

    name = "plus"
    shape = "mj"

    def serve(self, sim: Simulator, i: int) -> dict[str, Any]:
        """Task i as this family serves it."""
        return sim.task(i)

    def authorized(self, sim: Simulator, headers: dict[str, str]) -> bool:
        h = _lower(headers)
        auth = h.get("authorization", "")
        return sim.token in (h.get("mj-api-secret"), auth, auth.removeprefix("Bearer "))

    def refused(self, sim: Simulator, headers: dict[str, str]) -> Reply:
        return _reply(401, raw=b"", ctype="text/plain")

    def unknown(self, path: str) -> Reply:
        return _reply(404, {"error": "Not Found", "status": 404, "path": path})

    def route(self, method: str, path: str) -> str | None:
        """The name of the handler for a request, or None for a path this family lacks."""
        if method == "POST" and path == "/mj/task/query":
            return "query"
        if method == "POST" and path in BY_IDS:
            return "by_ids"
        return None

    def by_ids(self, sim: Simulator, req: Any, query: dict[str, str]) -> Reply:
        ids = req.get("ids") if isinstance(req, dict) else None
        found = [self.serve(sim, i) for i in sim.alive_of(ids or [])]
        return _reply(200, found)

    def query(self, sim: Simulator, req: Any, query: dict[str, str]) -> Reply:
        return sim._query(req)


class TrueAI(Api):
    name = "trueai"

    def serve(self, sim: Simulator, i: int) -> dict[str, Any]:
        t = dict(sim.task(i))
        if t["status"] == "CANCEL":  # trueai's own cancel writes FAILURE
            t.update(status="FAILURE", failReason="取消任务")

        def shown(ms: Any) -> str:
            if not ms:
                return ""
            return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")

        done = t["status"] in ("SUCCESS", "FAILURE")
        start, finish = t.get("startTime"), t.get("finishTime")
        t.update(
            displays={
                "status": t["status"],
                "submitTime": shown(t.get("submitTime")),
                "startTime": shown(start),
                "finishTime": shown(finish),
                "action": t["action"],
            },
            isCompleted=done,
            useTime=f"{(finish - start) / 1000:.2f} s" if start and finish else "-",
            mode="FAST",
            botType="MID_JOURNEY",
            storageOption="Official",
            imageUrls=[{"url": t["imageUrl"], "thumbnail": None}] if t.get("imageUrl") else [],
        )
        return t

    def authorized(self, sim: Simulator, headers: dict[str, str]) -> bool:
        # Compared verbatim, no "Bearer"; Authorization, when sent, is the one that counts.
        h = _lower(headers)
        if "authorization" in h:
            return h["authorization"] == sim.token
        return h.get("mj-api-secret") == sim.token

    def refused(self, sim: Simulator, headers: dict[str, str]) -> Reply:
        h = _lower(headers)
        if not h.get("authorization") and not h.get("mj-api-secret"):
            return _reply(401, raw=b"Authorization header missing.", ctype="text/plain")
        return _reply(403, raw="账号不可用".encode(), ctype="text/plain")

    def unknown(self, path: str) -> Reply:
        return _reply(404, raw=b"", ctype="text/plain")

    def route(self, method: str, path: str) -> str | None:
        if method == "POST" and path == "/mj/admin/tasks":
            return "admin_tasks"
        if method == "GET" and path == "/mj/task/list":
            return "latest"
        if method == "POST" and path in BY_IDS:
            return "by_ids"
        return None

    def admin_tasks(self, sim: Simulator, req: Any, query: dict[str, str]) -> Reply:
        if not sim.trueai_admin:
            return _reply(401, raw=b"Forbidden: User is not admin.", ctype="text/plain")
        pagination = req.get("pagination") if isinstance(req, dict) else None
        current = pagination.get("current", 1) if isinstance(pagination, dict) else 1
        size = pagination.get("pageSize", 10) if isinstance(pagination, dict) else 10
        if not isinstance(current, int) or not isinstance(size, int):
            return _reply(200, {"success": False, "code": 400, "message": "参数错误"})
        cap = 10 if sim.trueai_demo else 100
        size = max(1, min(size, cap))  # silently
        if sim.trueai_demo and current > 10:
            return _reply(200, {"success": False, "code": 403, "message": "演示模式，禁止操作"})
        current = max(1, current)
        total = len(sim.alive)
        tasks = [self.serve(sim, i) for i in sim.newest(size * (current - 1), size)]
        sim.page_log.append(current - 1)
        pages = (total + size - 1) // size
        return _reply(
            200,
            {
                "list": tasks,
                "pagination": {
                    "current": current,
                    "pageSize": size,
                    "total": total,
                    "pageCount": pages,
                },
                "extendData": {"total": total, "actionStats": {}},
            },
        )

    def latest(self, sim: Simulator, req: Any, query: dict[str, str]) -> Reply:
        return _reply(200, [self.serve(sim, i) for i in sim.newest(0, 100)])


class NoviceZK(Api):
    name = "novicezk"

    def serve(self, sim: Simulator, i: int) -> dict[str, Any]:
        t = dict(sim.task(i))
        t.pop("buttons", None)
        status = t["status"]
        if status == "MODAL":
            t["status"] = "SUBMITTED"
        elif status == "CANCEL":
            t["status"] = "FAILURE"
        props = dict(t.get("properties") or {})
        props.pop("botType", None)
        t["properties"] = props
        return t

    def authorized(self, sim: Simulator, headers: dict[str, str]) -> bool:
        return _lower(headers).get("mj-api-secret") == sim.token

    def unknown(self, path: str) -> Reply:
        if path.startswith("/mj/"):
            doc = {"timestamp": "2026-12-01T00:00:00.000+00:00", "status": 404}
            return _reply(404, {**doc, "error": "Not Found", "path": path})
        return _reply(404, raw=TOMCAT_404, ctype="text/html")

    def route(self, method: str, path: str) -> str | None:
        if method == "GET" and path == "/mj/task/list":
            return "whole"
        if method == "POST" and path == BY_IDS[0]:
            return "by_ids"
        return None

    def whole(self, sim: Simulator, req: Any, query: dict[str, str]) -> Reply:
        sim.page_log.append(0)
        return _reply(200, [self.serve(sim, i) for i in sim.newest(0, len(sim.alive))])


class NewAPI(Api):
    name = "newapi"
    shape = "newapi"

    def serve(self, sim: Simulator, i: int) -> dict[str, Any]:
        t = sim.task(i)

        def ts(ms: Any) -> int:
            if not ms:
                return 0
            return int(ms) // 1000 if sim.newapi_old else int(ms)

        props = t.get("properties") or {}
        status = t["status"]
        return {
            "id": i + 1,  # the relay's own row id: the list's order
            "code": 1,
            "user_id": sim.newapi_user or 1,
            "action": t["action"],
            "mj_id": t["id"],
            "prompt": t.get("prompt") or "",
            "prompt_en": t.get("promptEn") or "",
            "description": "提交成功",
            "state": t.get("state") or "",
            "submit_time": ts(t.get("submitTime")),
            "start_time": ts(t.get("startTime")),
            "finish_time": ts(t.get("finishTime")),
            "image_url": t.get("imageUrl") or "",
            "video_url": "",
            "video_urls": "[]",
            "status": "" if status in ("NOT_START", "MODAL") else status,
            "progress": t.get("progress") or "",
            "fail_reason": t.get("failReason") or "",
            "channel_id": 1,
            "quota": 50000,
            # JSON inside strings, as Go's encoding/json writes it: keys sorted, no spaces.
            "buttons": orjson.dumps(t.get("buttons") or [], option=orjson.OPT_SORT_KEYS).decode(),
            "properties": orjson.dumps(
                {"finalPrompt": props.get("finalPrompt", ""), "finalZhPrompt": ""},
                option=orjson.OPT_SORT_KEYS,
            ).decode(),
        }

    def authorized(self, sim: Simulator, headers: dict[str, str]) -> bool:
        h = _lower(headers)
        token = h.get("authorization", "").removeprefix("Bearer ").strip()
        user = h.get("new-api-user")
        return token == sim.token and (sim.newapi_user is None or user == str(sim.newapi_user))

    def refused(self, sim: Simulator, headers: dict[str, str]) -> Reply:
        return _reply(401, {"success": False, "message": "无权进行此操作，access token 无效"})

    def unknown(self, path: str) -> Reply:
        return _reply(200, raw=SPA, ctype="text/html; charset=utf-8")

    def route(self, method: str, path: str) -> str | None:
        if method == "GET" and path in ("/api/mj/self", "/api/mj/", "/api/mj"):
            return "dashboard"
        return None

    def dashboard(self, sim: Simulator, req: Any, query: dict[str, str]) -> Reply:
        try:
            p = int(query.get("p", "1"))
            size = int(query.get("page_size", "10"))
        except ValueError:
            return _reply(200, {"success": False, "message": "参数错误"})
        if sim.newapi_old:  # older versions: pages from 0, a fixed size, a bare array
            size = 10
            sim.page_log.append(p)
            rows = [self.serve(sim, i) for i in sim.newest(max(0, p) * size, size)]
            return _reply(200, {"success": True, "message": "", "data": rows})
        p = max(1, p)
        size = max(1, min(size, 100))
        sim.page_log.append(p - 1)
        rows = [self.serve(sim, i) for i in sim.newest((p - 1) * size, size)]
        data = {"items": rows, "total": len(sim.alive), "page": p, "page_size": size}
        return _reply(200, {"success": True, "message": "", "data": data})


class IdsOnly(Api):
    name = "ids"

    def serve(self, sim: Simulator, i: int) -> dict[str, Any]:
        t = sim.task(i)
        # A relay's view: no nulls ("" and 0 instead) and properties cut to the prompts.
        out = {k: ("" if v is None else v) for k, v in t.items()}
        for key in ("submitTime", "startTime", "finishTime"):
            out[key] = t.get(key) or 0
        props = t.get("properties") or {}
        out["properties"] = {"finalPrompt": props.get("finalPrompt", ""), "finalZhPrompt": ""}
        return out

    def refused(self, sim: Simulator, headers: dict[str, str]) -> Reply:
        doc = {"error": {"message": "无效的令牌", "type": "new_api_error", "code": ""}}
        return _reply(401, doc)

    def unknown(self, path: str) -> Reply:
        return _reply(200, raw=SPA, ctype="text/html; charset=utf-8")

    def route(self, method: str, path: str) -> str | None:
        if method == "POST" and path == BY_IDS[0]:
            return "by_ids"
        return None


_PLAYED: dict[str, type[Api]] = {a.name: a for a in (Api, TrueAI, NoviceZK, NewAPI, IdsOnly)}
# Every family tasksync reads (the one list of names), in its order; a name the simulator
# cannot play fails here, at import.
APIS: dict[str, type[Api]] = {name: _PLAYED[name] for name in FAMILIES}
