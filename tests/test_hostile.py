"""Hostile servers: bombs, trickles, lists that never end, poisoned tasks and forged text. Each
is contained: the run fails with one clear line (or stores what it can), memory and time stay
bounded, and nothing the server says can forge a log line or carry the token back out."""

from __future__ import annotations

import itertools
import json
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from sync.archive.models import Task
from sync.archive.store import Store
from sync.errors import BadResponse, RunawayList, ServerRefused, ServerUnreachable
from sync.jobs import pipeline
from sync.server import walk
from sync.server.client import connect
from sync.server.families.plus import parse_page
from sync.simulator import Faults, Simulator

from .helpers import (
    HostileServer,
    count,
    http_reply,
    last_run,
    sim_transport,
    source_for,
    spring_page,
)

Chunks = Iterator[tuple[float, bytes]]


def hostile_source(url: str, **kw: Any) -> Any:
    opts: dict[str, Any] = {"retry_attempts": 2, "retry_budget_s": 1, "timeout_s": 2}
    opts.update(kw)
    return source_for(url, **opts)


def _bomb(inflated: int) -> bytes:
    """A gzip body of about inflated/1000 bytes that inflates to `inflated` bytes of JSON."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [z.compress(b'{"content": [')]
    block = b" " * (1 << 20)
    for _ in range(inflated >> 20):
        parts.append(z.compress(block))
    parts.append(z.compress(b"]}") + z.flush())
    return b"".join(parts)


def test_gzip_bomb_fails_the_run_and_memory_stays_bounded(sqlite_store: Store) -> None:
    """300 KB of gzip that inflates to 300 MB: the run fails naming max_response_mb, and no
    more than the cap (64 MB) plus a chunk is ever held (peak well under 300 MB)."""
    bomb = _bomb(300 << 20)
    assert len(bomb) < 400_000

    def respond(*_: Any) -> Chunks:
        yield 0, http_reply(bomb, content_encoding="gzip")

    with HostileServer(respond) as server:
        src = hostile_source(server.url)
        tracemalloc.start()
        try:
            with (
                connect(src) as client,
                pytest.raises(BadResponse, match="max_response_mb") as info,
            ):
                pipeline.backfill(sqlite_store, client, src)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 150 << 20, f"peak {peak >> 20} MB"
    assert "\n" not in str(info.value)
    run = last_run(sqlite_store)
    assert run["outcome"] == "failed" and "max_response_mb" in run["error"]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_oversized_plain_body_is_refused(declared: bool) -> None:
    """A 300 MB plain reply: refused from its Content-Length, or after max_response_mb bytes
    when it has none; memory stays near the cap."""
    size = 300 << 20

    def respond(*_: Any) -> Chunks:
        if declared:
            yield 0, http_reply(b"", content_length=str(size))
            return
        yield 0, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        block = b"[" + b" " * (1 << 20)
        for _ in range(size >> 20):
            yield 0, block

    with HostileServer(respond) as server:
        client = connect(hostile_source(server.url, max_response_mb=8))
        tracemalloc.start()
        try:
            with client, pytest.raises(BadResponse, match=r"larger than max_response_mb \(8 MB\)"):
                client.query_page(0, 100)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 40 << 20, f"peak {peak >> 20} MB"


@pytest.mark.parametrize("where", ["body", "headers"])
def test_trickling_server_fails_within_timeout_plus_budget(where: str) -> None:
    """One byte a second keeps no request alive: each attempt ends at timeout_s, and all of
    them within timeout_s + retry_budget_s (here 2 + 2 s)."""
    reply = http_reply(spring_page([], 0, 0, True))
    head_len = reply.index(b"\r\n\r\n") + 4

    def respond(*_: Any) -> Chunks:
        start = head_len if where == "body" else 0
        if start:
            yield 0, reply[:start]
        for i in range(start, len(reply)):
            yield 1.0, reply[i : i + 1]

    with HostileServer(respond) as server:
        client = connect(hostile_source(server.url, retry_attempts=5, retry_budget_s=2))
        t0 = time.monotonic()
        with client, pytest.raises(ServerUnreachable, match="timed out"):
            client.query_page(0, 100)
        took = time.monotonic() - t0
    assert took < 2 + 2 + 1.5, took
    assert len(server.requests) >= 1


def _endless(distinct: bool) -> Any:
    def respond(method: str, path: str, headers: dict[str, str], body: bytes) -> Chunks:
        number = orjson.loads(body)["pageNumber"]
        base = 10**15 - number * 100 if distinct else 10**15
        tasks = [{"id": str(base - k), "status": "SUCCESS"} for k in range(100)]
        yield 0, http_reply(spring_page(tasks, number, 1000, False))

    return respond


@pytest.mark.parametrize("distinct", [False, True], ids=["same-page", "past-its-total"])
def test_list_that_never_ends_stops_with_one_line(sqlite_store: Store, distinct: bool) -> None:
    """The same page over and over, or pages past its own total: the walk stops with a clear
    line after a bounded number of requests, and what was read is kept."""
    with HostileServer(_endless(distinct)) as server:
        src = hostile_source(server.url)
        with connect(src) as client, pytest.raises(RunawayList, match="did not end") as info:
            pipeline.backfill(sqlite_store, client, src)
        assert len(server.requests) <= (25 if distinct else 4)
    assert "\n" not in str(info.value) and "source main" in str(info.value)
    assert last_run(sqlite_store)["outcome"] == "failed"
    assert count(sqlite_store, Task) == (len(server.requests) - 1) * 100 if distinct else 100


def test_list_that_never_ends_ends_the_sync_too(sqlite_store: Store) -> None:
    """The incremental head pass has the same guard as a walk."""
    with HostileServer(_endless(True)) as server:
        src = hostile_source(server.url, head_margin=10**6)
        with connect(src) as client, pytest.raises(RunawayList):
            pipeline.incremental(sqlite_store, client, src)
        assert len(server.requests) <= 25


def test_unicode_digit_id_and_time_do_not_poison_the_run(sqlite_store: Store) -> None:
    """An id or a time of '²' (a digit to str.isdigit, not to int): the task is stored with
    its id as given and the junk time as NULL, and every other task is stored."""
    sim = Simulator(300, seed=9)
    sim.overrides[150] = dict(sim.task(150), id="²")
    sim.overrides[151] = dict(sim.task(151), submitTime="²", startTime="٣")
    src = source_for("http://sim.test")
    client = connect(src, transport=sim_transport(sim))
    report = pipeline.backfill(sqlite_store, client, src)
    assert report.outcome == "ok" and (report.inserted, report.rejected) == (300, 0)
    again = pipeline.sweep(sqlite_store, client, src)  # an id out of order: nothing marked gone
    assert again.outcome == "ok" and again.gone == 0
    assert any("not sorted" in n for n in again.notes)
    with sqlite_store.engine.connect() as conn:
        row = conn.execute(Task.__table__.select().where(Task.id == sim.task_id(151))).one()
        assert row.submit_time is None and row.start_time is None
        assert conn.execute(Task.__table__.select().where(Task.id == "²")).one()


@pytest.mark.parametrize("total", [2**63, 2**64 + 5, -1, 10**30])
def test_out_of_range_totals_are_unknown(sqlite_store: Store, total: int) -> None:
    """A totalElements the checkpoint cannot hold (or a negative one) is treated as unknown."""
    page = parse_page({"content": [{"id": "1"}], "totalElements": total, "last": True}, 0, 1, "")
    assert page.total is None

    def handler(req: httpx.Request) -> httpx.Response:
        number = orjson.loads(req.content)["pageNumber"]
        ids = range(5000 - number * 100, 5000 - number * 100 - 100, -1) if number < 3 else []
        body = {"content": [{"id": str(i)} for i in ids], "totalElements": total}
        return httpx.Response(200, content=json.dumps({**body, "last": number >= 2}))

    src = source_for("http://mj.test")
    report = pipeline.backfill(
        sqlite_store, connect(src, transport=httpx.MockTransport(handler)), src
    )
    assert report.outcome == "ok" and report.inserted == 300


def test_success_false_replies_are_retried(sqlite_store: Store) -> None:
    """1 % of replies saying success=false no longer sink a long backfill: they are retried."""
    sim = Simulator(20_000, seed=4, faults=Faults(refuse=0.01))
    src = source_for("http://sim.test", retry_attempts=5)
    report = pipeline.backfill(sqlite_store, connect(src, transport=sim_transport(sim)), src)
    assert report.outcome == "ok" and report.inserted == 20_000 and report.retries >= 1


def test_success_false_after_the_budget_fails_with_the_message() -> None:
    """A refusal that persists fails the request with the server's message, after retries."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json={"success": False, "code": 3, "message": "账号已禁用"})

    client = connect(source_for("http://mj.test"), transport=httpx.MockTransport(handler))
    with pytest.raises(ServerRefused, match="账号已禁用") as info:
        client.query_page(0, 100)
    assert len(calls) == 6 and "gave up after retries" in str(info.value)


FORGED = "busy\n2026-12-01 00:00:00 INFO run source=main outcome=ok\x1b[2J\x1b]0;pwned\x07\r"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param({"success": False, "code": "x\ny", "message": FORGED}, id="message"),
        pytest.param({"success": False, "description": FORGED * 50}, id="long"),
        pytest.param({FORGED: 1, "x\x1b": 2}, id="keys"),
    ],
)
def test_server_text_is_one_printable_line(reply: dict[str, Any]) -> None:
    """What a server says reaches messages as one line, control characters escaped, cut."""
    client = connect(
        source_for("http://mj.test", retry_attempts=1),
        transport=httpx.MockTransport(lambda req: httpx.Response(200, json=reply)),
    )
    with pytest.raises((ServerRefused, BadResponse)) as info:
        client.query_page(0, 100)
    text = str(info.value)
    assert text.isprintable() and len(text) < 700, text


def test_token_echoed_by_the_server_is_redacted() -> None:
    """A server that quotes the token back (in an error, or JSON-escaped) never gets it shown."""
    token = 'CANARY-"echo"-7f3a'

    def handler(req: httpx.Request) -> httpx.Response:
        sent = req.headers["mj-api-secret"]
        doc = {"success": False, "message": f"bad token {sent} / {orjson.dumps(sent).decode()}"}
        return httpx.Response(200, json=doc)

    client = connect(
        source_for("http://mj.test", retry_attempts=1),
        token=token,
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(ServerRefused) as info:
        client.query_page(0, 100)
    assert "CANARY" not in str(info.value) and "***" in str(info.value)


# ---- found by a hostile-server review of every family (2026-12-06) --------------------------


def test_an_id_of_thousands_of_digits_does_not_stop_the_walk(sqlite_store: Store) -> None:
    """Ids are ordered by length and digits, not through int() (which refuses more than 4,300
    digits): such an id is rejected alone and the walk and sweep go on."""
    from sync.server.walk import id_key

    assert id_key("1" * 5000) > id_key("9" * 4999) > id_key("10") > id_key("009") > id_key("1")
    assert id_key("007") == id_key("7") and id_key("abc") > id_key("9" * 10)
    sim = Simulator(300, seed=9)
    sim.overrides[150] = dict(sim.task(150), id="1" * 5000)
    sim.overrides[151] = dict(sim.task(151), submitTime="1" * 5000)
    src = source_for("http://sim.test")
    client = connect(src, transport=sim_transport(sim))
    report = pipeline.backfill(sqlite_store, client, src)
    assert report.outcome == "ok" and (report.inserted, report.rejected) == (299, 1)
    assert pipeline.sweep(sqlite_store, client, src).outcome == "ok"


def test_a_server_echoing_the_token_gets_it_into_no_message(sqlite_store: Store) -> None:
    """A reply whose keys, body or task ids carry the token: the error, the log line and
    `sync_runs.error` show *** instead."""
    canary = "SeCrEt-canary-123"

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=orjson.dumps({canary: 1, "oops": True}))

    src = source_for("http://mj.test", retry_attempts=1)
    client = connect(src, token=canary, transport=httpx.MockTransport(handler))
    with pytest.raises(BadResponse) as info:
        pipeline.backfill(sqlite_store, client, src)
    assert canary not in str(info.value) and "***" in str(info.value)
    assert canary not in str(last_run(sqlite_store)["error"])


def test_list_by_condition_saves_only_the_tasks_asked_for() -> None:
    """A relay answering with tasks nobody asked for (other ids, the ids upper-cased or with
    spaces): only the asked ones come back, so sweeps cannot snowball the archive."""

    def handler(req: httpx.Request) -> httpx.Response:
        asked = orjson.loads(req.content)["ids"]
        tasks = [{"id": i, "status": "SUCCESS"} for i in asked]
        tasks += [{"id": i.upper()} for i in asked] + [{"id": f"{i} "} for i in asked]
        tasks += [{"id": f"someone-elses-{n}"} for n in range(3)]
        return httpx.Response(200, content=orjson.dumps(tasks))

    client = connect(source_for("http://mj.test"), transport=httpx.MockTransport(handler))
    got = client.list_by_ids(["abc", "xyz"])
    assert sorted(t["id"] for t in got) == ["abc", "xyz"]


def test_auto_detection_stops_on_a_busy_server_instead_of_guessing(
    sqlite_store: Store,
) -> None:
    """A plus server that answers its first probe with 503 (and lists its newest tasks at the
    deprecated /mj/task/list) is not taken for novicezk: detection fails, remembers nothing,
    and the next run finds plus."""
    from sync.errors import ServerBusy

    calls = {"query": 0}
    sim = Simulator(50, seed=3)
    plain = sim_transport(sim)

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/mj/task/query":
            calls["query"] += 1
            if calls["query"] == 1:
                return httpx.Response(503, content=b"busy")
        if req.url.path == "/mj/task/list":
            newest = [sim.task(i) for i in list(reversed(sim.alive))[:10]]
            return httpx.Response(200, content=orjson.dumps(newest))
        return plain.handle_request(req)

    src = source_for("http://mj.test", api="auto", retry_attempts=1)
    client = connect(src, transport=httpx.MockTransport(handler))
    with pytest.raises(ServerBusy, match="family"):
        pipeline.backfill(sqlite_store, client, src)
    client = connect(src, transport=httpx.MockTransport(handler))
    report = pipeline.backfill(sqlite_store, client, src)
    assert report.api == "plus" and report.inserted == 50


def test_terminal_output_never_carries_escape_codes(run: Any, tmp_path: Any) -> None:
    """`query` tables show control characters escaped (click would strip only some of them,
    and only when the output is not a terminal)."""
    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert run("--db", db, "db", "upgrade")[0] == 0
    sql = "SELECT 'IMAGINE' || char(27) || '[2J' || char(7) AS a"
    code, out, _ = run("--db", db, "query", sql)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out


def test_a_novicezk_sweep_never_marks_gone_a_task_it_listed(
    sqlite_store: Store, serve: Any
) -> None:
    """A task whose current version is rejected (a status of 10,000 characters) is still
    listed: the whole-list sweep keeps it, as the paged sweeps do."""
    sim = Simulator(40, seed=6, api="novicezk")
    src = source_for(serve(sim).url, api="novicezk")
    with connect(src) as client:
        assert pipeline.backfill(sqlite_store, client, src).inserted == 40
        i = sim.alive[7]
        sim.overrides[i] = dict(sim.task(i), status="SUCCESS" + "x" * 10_000)
        report = pipeline.sweep(sqlite_store, client, src)
    assert report.outcome == "ok" and report.rejected == 1 and report.gone == 0


def test_status_says_so_when_the_newest_item_is_not_a_task(sqlite_store: Store) -> None:
    """`status` asking a server whose newest listed item is not an object: a note, not an
    internal error."""

    from sync.views import status

    def respond(*_: Any) -> Chunks:
        yield 0, http_reply(spring_page(["x"], 0, 1, True))

    with HostileServer(respond) as server:
        src = source_for(server.url, retry_attempts=1)
        newest, why = status.ask_server(sqlite_store, src)
    assert newest is None and "not a task" in why


@pytest.mark.parametrize("page_field", ["missing", "a string"])
def test_newapi_without_a_page_number_reads_every_page_and_marks_nothing_gone(
    sqlite_store: Store, page_field: str
) -> None:
    """A new-api reply that does not say which page it is (no `page`, or `"page": "1"`): the
    page counting is learnt by comparing p=0 with p=1, so no page is skipped and a sweep marks
    nothing gone."""
    sim = Simulator(25, seed=8, api="newapi", newapi_user=1)
    inner = sim_transport(sim)

    def handler(req: httpx.Request) -> httpx.Response:
        reply = inner.handle_request(req)
        body = orjson.loads(reply.read())
        if page_field == "missing":
            body["data"].pop("page", None)
        else:
            body["data"]["page"] = str(body["data"]["page"])
        return httpx.Response(reply.status_code, content=orjson.dumps(body))

    src = source_for("http://sim.test", api="newapi", page_size=10, newapi_user=1)
    client = connect(src, transport=httpx.MockTransport(handler))
    assert pipeline.backfill(sqlite_store, client, src).inserted == 25
    client = connect(src, transport=httpx.MockTransport(handler))
    report = pipeline.sweep(sqlite_store, client, src)
    assert report.outcome == "ok" and report.gone == 0


@pytest.mark.parametrize("distinct", [False, True])
def test_a_whole_list_that_never_ends_stops_with_one_line(
    sqlite_store: Store, distinct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """novicezk's `/mj/task/list` streaming tasks without end (the same one over and over, or
    new ones forever): the sweep stops with one line, keeps what it read, marks nothing gone."""
    monkeypatch.setattr(walk, "WHOLE_LIST_MAX", 1000)

    def respond(*_: Any) -> Chunks:
        yield 0, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n["
        for n in itertools.count():
            tid = n if distinct else 7
            yield 0, b'{"id": "%d", "status": "SUCCESS", "submitTime": 1767225600000},' % tid

    with HostileServer(respond) as server:
        src = hostile_source(server.url, api="novicezk")
        with connect(src) as client, pytest.raises(RunawayList, match="never ends"):
            pipeline.sweep(sqlite_store, client, src)
    kept = count(sqlite_store, Task)
    assert (1000 <= kept <= 1200) if distinct else kept == 1
    assert last_run(sqlite_store)["gone"] == 0


DEPTH = 1_000_000


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_a_deeply_nested_whole_list_is_refused_in_bounded_memory(
    sqlite_store: Store, opener: bytes
) -> None:
    """`[[[[…` or `{"a":{"a":…` a million levels deep (ijson's memory grows with the square
    of the depth): refused with one line before the parser sees it, in little memory."""

    def respond(*_: Any) -> Chunks:
        yield 0, http_reply(b"[" + opener * DEPTH)

    with HostileServer(respond) as server:
        src = hostile_source(server.url, api="novicezk")
        tracemalloc.start()
        try:
            with connect(src) as client, pytest.raises(BadResponse, match="bracketed parts"):
                pipeline.sweep(sqlite_store, client, src)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 50 << 20, f"peak {peak >> 20} MB"


def test_pages_that_come_round_again_without_a_total_stop_the_walk(sqlite_store: Store) -> None:
    """No usable total and pages alternating between two sets (A, B, A, B ...): stopped with
    one line after a few pages, not walked until killed."""

    def handler(req: httpx.Request) -> httpx.Response:
        number = orjson.loads(req.content)["pageNumber"]
        first = 2000 if number % 2 else 3000
        body = {"content": [{"id": str(first - i)} for i in range(100)], "last": False}
        return httpx.Response(200, content=orjson.dumps(body))

    src = source_for("http://mj.test")
    client = connect(src, transport=httpx.MockTransport(handler))
    with pytest.raises(RunawayList, match="already returned"):
        pipeline.backfill(sqlite_store, client, src)
    assert client.requests < 10


def test_newapi_rows_without_a_row_id_are_walked(sqlite_store: Store) -> None:
    """new-api rows that carry no row `id` (only `mj_id`): the walk reads every page instead
    of taking them for the same page over and over."""
    sim = Simulator(35, seed=8, api="newapi", newapi_user=1)
    inner = sim_transport(sim)

    def handler(req: httpx.Request) -> httpx.Response:
        body = orjson.loads(inner.handle_request(req).read())
        for row in body["data"]["items"]:
            row.pop("id", None)
        return httpx.Response(200, content=orjson.dumps(body))

    src = source_for("http://sim.test", api="newapi", page_size=10, newapi_user=1)
    client = connect(src, transport=httpx.MockTransport(handler))
    report = pipeline.backfill(sqlite_store, client, src)
    assert report.outcome == "ok" and report.inserted == 35
