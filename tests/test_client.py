"""The plus client, through httpx.MockTransport: shapes, errors, retries, auth, rate limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from sync.config import ImagesSettings
from sync.errors import AuthRefused, BadResponse, HTTPStatusError, ServerRefused, ServerUnreachable
from sync.images.client import ImageClient
from sync.server.client import Client, connect
from sync.server.families.plus import parse_page
from sync.server.transport import Deadline, DeadlineTransport, parse_retry_after

from .helpers import source_for

Handler = Callable[[httpx.Request], httpx.Response]


def client_with(handler: Handler, **kw: Any) -> Client:
    token = kw.pop("token", None)
    return connect(
        source_for("http://mj.test", **kw), token=token, transport=httpx.MockTransport(handler)
    )


def page_json(ids: list[str], number: int = 0, last: bool = True, total: int = 3) -> bytes:
    return orjson.dumps(
        {
            "content": [{"id": i} for i in ids],
            "last": last,
            "number": number,
            "totalElements": total,
            "size": 100,
        }
    )


def test_client_sends_documented_query_body_and_secret_header() -> None:
    """POST /mj/task/query with 0-based pageNumber, pageSize, id,desc and mj-api-secret."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, content=page_json(["3", "2", "1"]))

    page = client_with(handler, token="s3cret").query_page(0, 100)
    assert [t["id"] for t in page.tasks] == ["3", "2", "1"] and page.last and page.total == 3
    req = seen[0]
    assert req.url.path == "/mj/task/query" and req.method == "POST"
    assert orjson.loads(req.content) == {"pageNumber": 0, "pageSize": 100, "sort": "id,desc"}
    assert req.headers["mj-api-secret"] == "s3cret" and "authorization" not in req.headers


def test_client_bearer_header_when_configured() -> None:
    """auth_header = Authorization sends `Bearer TOKEN`."""
    got: dict[str, str] = {}

    def handler(req: httpx.Request) -> httpx.Response:
        got.update(req.headers)
        return httpx.Response(200, content=page_json([]))

    client_with(handler, token="tok", auth_header="Authorization").query_page(0, 10)
    assert got["authorization"] == "Bearer tok" and "mj-api-secret" not in got


@pytest.mark.parametrize(
    ("doc", "last", "total"),
    [
        pytest.param(
            {"content": [{"id": "1"}], "last": False, "totalElements": 9}, False, 9, id="classic"
        ),
        pytest.param(
            {
                "content": [{"id": "1"}],
                "page": {"size": 1, "number": 0, "totalElements": 2, "totalPages": 2},
            },
            False,
            2,
            id="nested-more",
        ),
        pytest.param(
            {
                "content": [{"id": "1"}],
                "page": {"size": 1, "number": 1, "totalElements": 2, "totalPages": 2},
            },
            True,
            2,
            id="nested-last",
        ),
        pytest.param(
            {"content": [], "last": False, "totalElements": 5}, True, 5, id="empty-content-ends"
        ),
    ],
)
def test_parse_page_accepts_both_spring_shapes(doc: dict[str, Any], last: bool, total: int) -> None:
    """Classic and nested Spring pages parse; an empty page always ends the walk."""
    page = parse_page(doc, doc.get("page", {}).get("number", 0), 1, "here")
    assert (page.last, page.total) == (last, total)


@pytest.mark.parametrize(
    ("status", "body", "ctype", "words"),
    [
        pytest.param(
            200,
            b"<html><body>dashboard</body></html>",
            "text/html",
            ["200", "text/html", "not JSON", "http://mj.test/mj/task/query"],
            id="html",
        ),
        pytest.param(200, b"", "application/json", ["empty body"], id="empty"),
        pytest.param(200, b'{"content": [', "application/json", ["truncated"], id="truncated"),
    ],
)
def test_client_non_json_reply_names_url_status_and_type(
    status: int, body: bytes, ctype: str, words: list[str]
) -> None:
    """A reply that is not JSON is a BadResponse naming URL, status and content type."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, content=body, headers={"Content-Type": ctype})

    with pytest.raises(BadResponse) as info:
        client_with(handler).query_page(0, 100)
    for w in words:
        assert w in str(info.value)
    assert len(calls) == 6  # retried (stamina testing mode: 6 attempts, no sleeping)


def test_client_wrong_json_shape_is_bad_response_not_retried() -> None:
    """JSON without a content list is refused at once (retrying cannot fix it)."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json={"data": []})

    with pytest.raises(BadResponse, match="Spring Page"):
        client_with(handler).query_page(0, 100)
    assert len(calls) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_client_auth_refusal_is_not_retried(status: int) -> None:
    """401/403 say the server refused the token, without retrying and without the token."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status)

    with pytest.raises(AuthRefused) as info:
        client_with(handler, token="canary-XYZ").query_page(0, 100)
    assert len(calls) == 1 and "refused the token" in str(info.value)
    assert "canary-XYZ" not in str(info.value)


def test_client_success_false_is_server_refused() -> None:
    """HTTP 200 with success=false is an error carrying the server's message."""
    doc = {"success": False, "code": 9, "message": "账号已禁用"}
    client = client_with(lambda req: httpx.Response(200, json=doc))
    with pytest.raises(ServerRefused, match="账号已禁用"):
        client.query_page(0, 100)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_client_retries_transient_statuses_then_succeeds(status: int) -> None:
    """Rate limits and gateway errors are retried; the retry is counted."""
    replies = [
        httpx.Response(status, text="<html>busy</html>"),
        httpx.Response(200, content=page_json(["1"])),
    ]
    client = client_with(lambda req: replies.pop(0))
    assert client.query_page(0, 100).tasks == [{"id": "1"}]
    assert (client.requests, client.retries) == (2, 1)


def test_client_other_4xx_is_an_http_error() -> None:
    """A 404 (wrong base_url) is reported with its status, not retried."""
    with pytest.raises(HTTPStatusError, match="404"):
        client_with(lambda req: httpx.Response(404, text="nope")).query_page(0, 1)


def test_client_unreachable_server() -> None:
    """Connection errors become ServerUnreachable after retries."""

    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    with pytest.raises(ServerUnreachable, match="unreachable"):
        client_with(handler).query_page(0, 1)


def test_parse_retry_after_seconds_and_http_date() -> None:
    """Retry-After is honoured as delta-seconds and as an HTTP date."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_client_honours_max_requests_per_second() -> None:
    """Ten requests at 20 per second take at least 0.45 s (the limiter spaces them)."""
    client = client_with(
        lambda req: httpx.Response(200, content=page_json([])), max_requests_per_second=20
    )
    t0 = time.monotonic()
    for _ in range(10):
        client.query_page(0, 1)
    assert time.monotonic() - t0 >= 0.45


def test_list_by_ids_posts_ids_and_returns_tasks() -> None:
    """list-by-condition takes {"ids": [...]} and returns a JSON array."""
    bodies: list[Any] = []

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(req.content))
        return httpx.Response(200, json=[{"id": "a"}])

    client = client_with(handler)
    assert client.list_by_ids(["a", "b"]) == [{"id": "a"}]
    assert bodies == [{"ids": ["a", "b"]}] and client.requests == 1
    with pytest.raises(ValueError, match="100"):
        client.list_by_ids([str(i) for i in range(101)])


def test_deadline_transport_carries_what_it_is_given_or_refuses_it() -> None:
    """An option set on the transport reaches its connections (here the address it connects
    from); one its pool cannot carry (a proxy) is refused, never silently dropped."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.client_address[0])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        transport = DeadlineTransport(Deadline(), local_address="127.0.0.2")
        with httpx.Client(transport=transport) as http:
            assert http.get(f"http://127.0.0.1:{server.server_address[1]}/").status_code == 204
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["127.0.0.2"]
    with pytest.raises(ValueError, match="'proxy' is not supported"):
        DeadlineTransport(Deadline(), proxy="http://127.0.0.1:9")


def test_both_clients_ignore_proxies_and_credentials_from_the_environment() -> None:
    """The task client and the image client are each built with `trust_env=False`: no proxy
    settings and no .netrc credentials from the environment, whatever it holds."""
    with connect(source_for("http://mj.test")) as task, ImageClient(ImagesSettings()) as image:
        assert (task.http.trust_env, image.http.trust_env) == (False, False)
