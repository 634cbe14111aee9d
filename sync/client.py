"""The only door to the network: the plus API (`POST /mj/task/query`, `list-by-condition`),
with auth, a deadline per request, a byte cap per reply (`sync.transport`), retries (stamina),
a per-source rate limit and strict response checks.

It returns parsed task objects (dicts, as the server sent them) inside `ServerPage`s; it never hands
out raw HTTP responses, never puts the token in a message, and shows what the server says only
through `Client.say` (one printable line, the token scrubbed).
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import stamina

if TYPE_CHECKING:  # the fetch process runs this module without loading pydantic
    from sync.config import SourceSettings

from sync.errors import (
    AuthRefused,
    BadResponse,
    ConfigError,
    HTTPStatusError,
    ServerError,
    ServerRefused,
    ServerUnreachable,
    printable,
)
from sync.records import task_id
from sync.transport import (
    ACCEPT_ENCODING,
    BadEncoding,
    Deadline,
    DeadlineTransport,
    TooLarge,
    read_capped,
)

log = logging.getLogger("tasksync.client")

QUERY_PATH = "/mj/task/query"
BY_IDS_PATH = "/mj/task/list-by-condition"
RETRY_STATUSES = {429, 500, 502, 503, 504}
BY_IDS_MAX = 100


@dataclass(frozen=True, slots=True)
class ServerPage:
    """One page of the task list as the server sent it, newest first (`body`: the reply's
    bytes, when asked for)."""

    number: int
    size: int
    tasks: list[Any]
    total: int | None
    last: bool
    body: bytes | None = None

    @property
    def ids(self) -> list[str]:
        """The ids on the page, as the archive stores them."""
        return [tid for tid in map(task_id, self.tasks) if tid is not None]


class _Transient(ServerError):
    """A failure worth retrying; `retry_after` is the server's wish, in seconds."""

    def __init__(
        self, message: str, final: type[ServerError], retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.final = final  # what to raise once retries are exhausted
        self.retry_after = retry_after


class RateLimiter:
    """At most `rate` request starts per second, shared by every thread of a source."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class Client:
    """A plus-API client for one source."""

    def __init__(
        self,
        source: SourceSettings,
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        wait_initial: float = 0.5,
        wait_max: float = 30.0,
    ) -> None:
        self.source = source
        # What a fetch process needs to open the same client (none with a custom transport).
        self._reopen = None if transport is not None else (token, wait_initial, wait_max)
        self.base = source.base_url.rstrip("/")
        # Secrets to scrub from anything the server says back (and variants a JSON echo makes).
        self._secrets = sorted({token, orjson.dumps(token).decode()[1:-1]}) if token else []
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
            "User-Agent": "tasksync",
        }
        if token:
            if source.auth_header == "Authorization":
                headers["Authorization"] = f"Bearer {token}"
            else:
                headers["mj-api-secret"] = token
        verify: ssl.SSLContext | bool = True
        if source.ca_bundle is not None:
            try:
                verify = ssl.create_default_context(cafile=str(source.ca_bundle))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"source {source.name}: ca_bundle {source.ca_bundle} is not a usable "
                    f"PEM CA file ({exc})"
                ) from None
        self.deadline = Deadline()
        limits = httpx.Limits(max_connections=max(4, source.concurrency * 2))
        self.http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(source.timeout_s, connect=min(10.0, source.timeout_s)),
            transport=transport or DeadlineTransport(self.deadline, verify=verify, limits=limits),
            follow_redirects=False,
        )
        self.limiter = RateLimiter(source.max_requests_per_second)
        self.wait_initial = wait_initial
        self.wait_max = wait_max
        self.max_bytes = int(source.max_response_mb * 1024 * 1024)
        self.requests = 0
        self.retries = 0
        self._count_lock = threading.Lock()

    @property
    def spawn_args(self) -> tuple[Any, ...] | None:
        """What a fetch process needs to open the same client: plain settings (none with a
        custom transport, which cannot cross a process boundary)."""
        if self._reopen is None:
            return None
        return (self.source.model_dump(), *self._reopen)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def say(self, text: object, limit: int = 300) -> str:
        """Server-provided text as it may appear in a message: the token scrubbed, one line,
        control characters escaped, cut to `limit`."""
        s = str(text)
        for secret in self._secrets:
            s = s.replace(secret, "***")
        return printable(s, limit)

    # ---- one request, retried ---------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> tuple[Any, bytes]:
        """The parsed JSON reply, and its bytes. Each attempt has `timeout_s` for the whole
        request (connect, send, every byte of the reply); retries stop once `retry_budget_s`
        is spent, so one request takes at most timeout_s + retry_budget_s."""
        url = self.base + path
        src = self.source
        give_up = time.monotonic() + src.timeout_s + src.retry_budget_s

        def backoff(exc: Exception) -> bool | float:
            if not isinstance(exc, _Transient):
                return False
            if exc.retry_after is not None:
                return min(exc.retry_after, src.retry_budget_s)
            return True

        last: _Transient | None = None
        try:
            for attempt in stamina.retry_context(
                on=backoff,
                attempts=src.retry_attempts,
                timeout=src.retry_budget_s,
                wait_initial=self.wait_initial,
                wait_max=self.wait_max,
            ):
                with attempt:
                    if last is not None and time.monotonic() >= give_up:
                        raise last  # the budget is spent: no attempt left to make
                    if attempt.num > 1:
                        with self._count_lock:
                            self.retries += 1
                    try:
                        return self._post_once(url, body, give_up)
                    except _Transient as exc:
                        last = exc
                        raise
        except _Transient as exc:
            raise exc.final(f"{exc} (gave up after retries)") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _post_once(self, url: str, body: dict[str, Any], give_up: float) -> tuple[Any, bytes]:
        name = self.source.name
        self.limiter.wait()
        with self._count_lock:
            self.requests += 1
        left = max(0.001, min(self.source.timeout_s, give_up - time.monotonic()))
        self.deadline.at = time.monotonic() + left
        try:
            with self.http.stream(
                "POST",
                url,
                content=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=httpx.Timeout(left, connect=min(10.0, left)),
            ) as resp:
                status, content = self._check_status(resp, url), b""
                if status == 200:
                    content = read_capped(resp, self.max_bytes, self.deadline)
        except httpx.TimeoutException:
            raise _Transient(
                f"source {name}: POST {url}: timed out (timeout_s = {self.source.timeout_s:g} "
                "for the whole request)",
                ServerUnreachable,
            ) from None
        except httpx.LocalProtocolError as exc:
            # The request itself could not be sent; its text may quote a header: not shown.
            raise ServerUnreachable(
                f"source {name}: POST {url}: the request could not be sent ({type(exc).__name__})"
            ) from None
        except (httpx.TransportError, OSError) as exc:
            raise _Transient(
                f"source {name}: POST {url}: server unreachable ({self.say(exc, 200)})",
                ServerUnreachable,
            ) from None
        except TooLarge:
            raise BadResponse(
                f"source {name}: POST {url}: the reply is larger than max_response_mb "
                f"({self.source.max_response_mb:g} MB); nothing of it was used"
            ) from None
        except BadEncoding as exc:
            raise _Transient(f"source {name}: POST {url}: {self.say(exc)}", BadResponse) from None
        finally:
            self.deadline.at = None
        return self._parse(content, resp, url)

    def _check_status(self, resp: httpx.Response, url: str) -> int:
        """Raise for anything but 200; the reply's body is read only for a 200."""
        name = self.source.name
        status = resp.status_code
        ctype = self.say(resp.headers.get("content-type", "").split(";")[0].strip(), 80)
        ctype = ctype or "no content type"
        if status in (401, 403):
            raise AuthRefused(
                f"source {name}: POST {url} returned {status}: the server refused the token "
                f"(check {self.source.token_env or self.source.token_file or 'the token'} and "
                f"auth_header = {self.source.auth_header!r})"
            )
        if status in RETRY_STATUSES:
            raise _Transient(
                f"source {name}: POST {url} returned {status} ({ctype})",
                ServerError,
                parse_retry_after(resp.headers.get("retry-after")),
            )
        if status != 200:
            raise HTTPStatusError(f"source {name}: POST {url} returned {status} ({ctype})", status)
        return status

    def _parse(self, content: bytes, resp: httpx.Response, url: str) -> tuple[Any, bytes]:
        name = self.source.name
        ctype = self.say(resp.headers.get("content-type", "").split(";")[0].strip(), 80)
        ctype = ctype or "no content type"
        if not content.strip():
            raise _Transient(
                f"source {name}: POST {url} returned 200 {ctype} with an empty body, not JSON",
                BadResponse,
            )
        try:
            data = loads(content)
        except ValueError:
            looks_html = content.lstrip()[:1] == b"<"
            hint = " (an HTML page: a proxy in the way, or a wrong base_url?)" if looks_html else ""
            what = "not JSON" if looks_html or "json" not in ctype else "truncated or invalid JSON"
            raise _Transient(
                f"source {name}: POST {url} returned 200 {ctype}, {what}{hint}", BadResponse
            ) from None
        if isinstance(data, dict) and data.get("success") is False:
            # A business error (trueai, relays): retried like a 5xx, then shown as said.
            msg = data.get("message") or data.get("description") or "no message"
            raise _Transient(
                f"source {name}: POST {url}: the server said success=false "
                f"(code {self.say(data.get('code'), 40)}): {self.say(msg)}",
                ServerRefused,
            )
        return data, content

    # ---- the API ----------------------------------------------------------------------------
    def query_page(self, number: int, size: int, *, keep_body: bool = False) -> ServerPage:
        """One page of `POST /mj/task/query`, sorted by id, newest first; with `keep_body`, the
        reply's bytes ride along in `page.body` (cheaper to hand to another process than the
        parsed tasks)."""
        url = self.base + QUERY_PATH
        data, body = self._post(
            QUERY_PATH, {"pageNumber": number, "pageSize": size, "sort": "id,desc"}
        )
        page = parse_page(data, number, size, f"source {self.source.name}: POST {url}")
        return dataclasses.replace(page, body=body) if keep_body else page

    def list_by_ids(self, ids: list[str]) -> list[Any]:
        """`POST /mj/task/list-by-condition` for at most 100 ids; unknown ids are left out."""
        if len(ids) > BY_IDS_MAX:
            raise ValueError("at most 100 ids per request")
        url = self.base + BY_IDS_PATH
        data, _body = self._post(BY_IDS_PATH, {"ids": ids})
        if not isinstance(data, list):
            raise BadResponse(
                f"source {self.source.name}: POST {url}: expected a JSON array of tasks, "
                f"got {type(data).__name__}"
            )
        return data


def loads(content: bytes) -> Any:
    """Parse a JSON reply: orjson, or for what it refuses but JSON allows (a number beyond a
    double, such as 1e400) the standard library, so one odd value never sinks a page."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        try:
            return json.loads(content)
        except RecursionError:
            raise ValueError("nested too deeply") from None


MAX_COUNT = 2**53  # a page number or total beyond this is not a real count: unknown


def connect(src: SourceSettings) -> Client:
    """The client of a configured source, its token read and checked now: how the command
    line, the daemon and the demo open one. (The fetch process reopens its parent's.)"""
    return Client(src, token=src.token())


def _int(value: Any) -> int | None:
    """A count from the server, or None when it is missing, not an integer or out of range."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


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
        total = _int(nested.get("totalElements"))
        pages = _int(nested.get("totalPages"))
        num = _int(nested.get("number"))
        last = not tasks or (pages is not None and num is not None and num >= pages - 1)
    else:
        total = _int(data.get("totalElements"))
        flag = data.get("last")
        last = not tasks or flag is True
        if not isinstance(flag, bool):
            pages = _int(data.get("totalPages"))
            last = last or (pages is not None and number >= pages - 1)
    return ServerPage(number=number, size=size, tasks=tasks, total=total, last=bool(last))
