"""The only door to the network: one source's HTTP client, with auth, a deadline per request,
a byte cap per reply (`sync.transport`), retries (stamina), a per-source rate limit and strict
response checks. Which endpoints hold the task list, and how their replies read, is the
source's family adapter (`sync.families`), which makes its requests through this client.

It returns parsed task objects (dicts, as the server sent them) inside `ServerPage`s; it never
hands out raw HTTP responses, never puts the token in a message, and shows what the server
says only through `Client.say` (one printable line, the token scrubbed).

`ImageClient` is the other client here: for the links tasks carry (images, videos), which it
treats as untrusted input and fetches without any credential.
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
import stamina

if TYPE_CHECKING:  # the fetch process runs this module without loading pydantic
    from sync.config import ImagesSettings, SourceSettings
    from sync.server.families import Family

from sync.errors import (
    AuthRefused,
    BadResponse,
    ConfigError,
    HTTPStatusError,
    ServerBusy,
    ServerError,
    ServerRefused,
    ServerUnreachable,
    TasksyncError,
    keep_secret,
    printable,
)
from sync.server.transport import (
    ACCEPT_ENCODING,
    CHUNK,
    AddressRefused,
    BadEncoding,
    Deadline,
    DeadlineTransport,
    TooLarge,
    iter_decoded,
    read_capped,
)
from sync.tasks.records import MJ, SHAPES, Shape, task_id

log = logging.getLogger("tasksync.client")

RETRY_STATUSES = {429, 500, 502, 503, 504}
BY_IDS_MAX = 100


@dataclass(frozen=True, slots=True)
class ServerPage:
    """One page of the task list as the server sent it, newest first. `keys` orders the walk
    (the task ids, unless the family orders by something else, such as new-api's row ids);
    `body` is the reply's bytes, when asked for."""

    number: int
    size: int
    tasks: list[Any]
    total: int | None
    last: bool
    body: bytes | None = None
    shape: str = MJ.name
    walk_keys: list[str] | None = field(default=None, compare=False)

    @property
    def ids(self) -> list[str]:
        """The ids on the page, as the archive stores them."""
        shape = SHAPES[self.shape]
        return [tid for tid in (task_id(t, shape) for t in self.tasks) if tid is not None]

    @property
    def keys(self) -> list[str]:
        return self.walk_keys if self.walk_keys is not None else self.ids


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
    """One source's HTTP client; `family` (an adapter from `sync.families`) knows its API."""

    def __init__(
        self,
        source: SourceSettings,
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        wait_initial: float = 0.5,
        wait_max: float = 30.0,
        family: Family | None = None,
    ) -> None:
        from sync.server.families import named

        self.source = source
        self.token = token
        # What a fetch process needs to open the same client (none with a custom transport).
        self._reopen = None if transport is not None else (token, wait_initial, wait_max)
        self.base = source.base_url.rstrip("/")
        # Secrets to scrub from anything the server says back (and variants a JSON echo makes).
        self._secrets = sorted({token, orjson.dumps(token).decode()[1:-1]}) if token else []
        if token:
            keep_secret(token)  # printable scrubs it too, wherever server text is quoted
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
            "User-Agent": "tasksync",
        }
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
        self.family = family if family is not None else named(source.api)

    @property
    def spawn_args(self) -> tuple[Any, ...] | None:
        """What a fetch process needs to open the same client: plain settings and the family
        with what it learned (none with a custom transport, which cannot cross a process
        boundary)."""
        if self._reopen is None or self.family is None:
            return None
        return (self.source.model_dump(), *self._reopen, self.family.name, self.family.state())

    @property
    def shape(self) -> Shape:
        """Where this source's task objects keep the archive's fields."""
        return SHAPES[self.family.shape] if self.family is not None else MJ

    def api(self) -> Family:
        """The source's family adapter (set from `api`, or by detection for `auto`)."""
        if self.family is None:
            raise TasksyncError(f"source {self.source.name}: its server family is not known yet")
        return self.family

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

    @contextlib.contextmanager
    def _scrubbed(self) -> Iterator[None]:
        """Errors the families raise quote what the server sent (its keys, a parser's view of
        the body): a server that echoes the token must not get it into a message, a log or
        `sync_runs.error`."""
        try:
            yield
        except TasksyncError as exc:
            text = str(exc)
            if any(secret in text for secret in self._secrets):
                clean = copy.copy(exc)  # same type and attributes (an HTTP status, say)
                clean.args = (self.say(text, 1000),)
                raise clean from None
            raise

    # ---- the task list, as the source's family serves it -------------------------------------
    def query_page(self, number: int, size: int, *, keep_body: bool = False) -> ServerPage:
        """Page `number` (counted from 0 whatever the family's own base) of the task list,
        newest first; with `keep_body`, the reply's bytes ride along in `page.body`."""
        with self._scrubbed():
            return self.api().page(self, number, size, keep_body)

    def list_by_ids(self, ids: list[str]) -> list[Any]:
        """The tasks with these ids (at most 100) that the server still has."""
        if len(ids) > BY_IDS_MAX:
            raise ValueError("at most 100 ids per request")
        with self._scrubbed():
            tasks = self.api().by_ids(self, ids)
        asked = set(ids)
        kept = [t for t in tasks if task_id(t, self.shape) in asked]
        if len(kept) < len(tasks):  # not what was asked for: never saved as if it were
            log.warning(
                "source %s: list-by-condition returned %d tasks that were not asked for; ignored",
                self.source.name,
                len(tasks) - len(kept),
            )
        return kept

    def whole_list(self) -> Iterator[list[Any]]:
        """The whole task list in batches, for a family that serves it as one stream."""
        with self._scrubbed():
            yield from self.api().whole(self)

    # ---- one request, retried ---------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        probe: bool = False,
    ) -> tuple[Any, bytes]:
        """One request and its parsed JSON reply (and the reply's bytes). Each attempt has
        `timeout_s` for the whole request (connect, send, every byte of the reply); retries
        stop once `retry_budget_s` is spent, so one request takes at most timeout_s +
        retry_budget_s. With `probe`, one attempt, and a reply that is not JSON is final."""
        url = self.base + path
        src = self.source
        give_up = time.monotonic() + src.timeout_s + src.retry_budget_s

        def backoff(exc: Exception) -> bool | float:
            if not isinstance(exc, _Transient) or probe:
                return False
            if exc.retry_after is not None:
                return min(exc.retry_after, src.retry_budget_s)
            return True

        last: _Transient | None = None
        try:
            for attempt in stamina.retry_context(
                on=backoff,
                attempts=1 if probe else src.retry_attempts,
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
                        return self._once(method, url, body, params, give_up)
                    except _Transient as exc:
                        last = exc
                        raise
        except _Transient as exc:
            raise exc.final(f"{exc}{'' if probe else ' (gave up after retries)'}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        from sync.server.families import auth_headers

        headers = auth_headers(self.family, self.token, self.source)
        if extra:
            headers.update(extra)
        return headers

    def _once(
        self, method: str, url: str, body: Any, params: dict[str, Any] | None, give_up: float
    ) -> tuple[Any, bytes]:
        self.limiter.wait()
        with self._count_lock:
            self.requests += 1
        left = max(0.001, min(self.source.timeout_s, give_up - time.monotonic()))
        self.deadline.at = time.monotonic() + left
        where = f"source {self.source.name}: {method} {url}"
        extra = {"Content-Type": "application/json"} if body is not None else None
        try:
            with self.http.stream(
                method,
                url,
                content=None if body is None else orjson.dumps(body),
                params=params,
                headers=self._headers(extra),
                timeout=httpx.Timeout(left, connect=min(10.0, left)),
            ) as resp:
                status, content = self._check_status(resp, where), b""
                if status == 200:
                    content = read_capped(resp, self.max_bytes, self.deadline)
        except (httpx.HTTPError, OSError, TooLarge, BadEncoding) as exc:
            raise self._failure(exc, where) from None
        finally:
            self.deadline.at = None
        return self._parse(content, resp, where)

    def _failure(self, exc: Exception, where: str) -> Exception:
        """A transport-level failure as a tasksync error (transient ones retried)."""
        if isinstance(exc, httpx.TimeoutException):
            return _Transient(
                f"{where}: timed out (timeout_s = {self.source.timeout_s:g} for the whole request)",
                ServerUnreachable,
            )
        if isinstance(exc, httpx.LocalProtocolError):
            # The request itself could not be sent; its text may quote a header: not shown.
            return ServerUnreachable(
                f"{where}: the request could not be sent ({type(exc).__name__})"
            )
        if isinstance(exc, TooLarge):
            return BadResponse(
                f"{where}: the reply is larger than max_response_mb "
                f"({self.source.max_response_mb:g} MB); nothing of it was used"
            )
        if isinstance(exc, BadEncoding):
            return _Transient(f"{where}: {self.say(exc)}", BadResponse)
        return _Transient(f"{where}: server unreachable ({self.say(exc, 200)})", ServerUnreachable)

    @contextlib.contextmanager
    def stream(self, path: str) -> Iterator[Iterator[bytes]]:
        """A GET whose reply is read as it comes (a whole task list): the decoded bytes in
        chunks. Opening it is retried like any request; each chunk must come within
        `timeout_s` (the reply as a whole may take longer), and the family bounds what it
        holds (each task object within max_response_mb)."""
        url = self.base + path
        where = f"source {self.source.name}: GET {url}"
        src = self.source
        for attempt in stamina.retry_context(
            on=lambda exc: isinstance(exc, _Transient),
            attempts=src.retry_attempts,
            timeout=src.retry_budget_s,
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
        ):
            with attempt:
                if attempt.num > 1:
                    with self._count_lock:
                        self.retries += 1
                self.limiter.wait()
                with self._count_lock:
                    self.requests += 1
                self.deadline.at = time.monotonic() + src.timeout_s
                try:
                    with self.http.stream("GET", url, headers=self._headers()) as resp:
                        self._check_status(resp, where)
                        yield iter_decoded(resp, self.deadline, src.timeout_s)
                        return
                except _Transient:
                    raise
                except (httpx.HTTPError, OSError, BadEncoding) as exc:
                    failure = self._failure(exc, where)
                    if isinstance(failure, _Transient):
                        raise failure.final(str(failure)) from None
                    raise failure from None
                finally:
                    self.deadline.at = None

    def _check_status(self, resp: httpx.Response, where: str) -> int:
        """Raise for anything but 200; the reply's body is read only for a 200 (and a short
        look at a 401/403, which often says why)."""
        status = resp.status_code
        ctype = self.say(resp.headers.get("content-type", "").split(";")[0].strip(), 80)
        ctype = ctype or "no content type"
        if status in (401, 403):
            why = ""
            with contextlib.suppress(Exception):
                text = read_capped(resp, 2048, self.deadline).decode("utf-8", "replace")
                if text.strip() and not text.lstrip().startswith("<"):
                    why = f": {self.say(text, 120)}"
            raise AuthRefused(
                f"{where} returned {status}{why}: the server refused the token (check "
                f"{self.source.token_env or self.source.token_file or 'the token'} and "
                f"auth_header = {self.source.auth_header!r})"
            )
        if status in RETRY_STATUSES:
            raise _Transient(
                f"{where} returned {status} ({ctype})",
                ServerBusy,
                parse_retry_after(resp.headers.get("retry-after")),
            )
        if status != 200:
            raise HTTPStatusError(f"{where} returned {status} ({ctype})", status)
        return status

    def _parse(self, content: bytes, resp: httpx.Response, where: str) -> tuple[Any, bytes]:
        ctype = self.say(resp.headers.get("content-type", "").split(";")[0].strip(), 80)
        ctype = ctype or "no content type"
        if not content.strip():
            raise _Transient(
                f"{where} returned 200 {ctype} with an empty body, not JSON", BadResponse
            )
        try:
            data = loads(content)
        except ValueError:
            looks_html = content.lstrip()[:1] == b"<"
            hint = " (an HTML page: a proxy in the way, or a wrong base_url?)" if looks_html else ""
            what = "not JSON" if looks_html or "json" not in ctype else "truncated or invalid JSON"
            raise _Transient(f"{where} returned 200 {ctype}, {what}{hint}", BadResponse) from None
        if isinstance(data, dict) and data.get("success") is False:
            # A business error (trueai, relays): retried like a 5xx, then shown as said.
            msg = data.get("message") or data.get("description") or "no message"
            raise _Transient(
                f"{where}: the server said success=false (code {self.say(data.get('code'), 40)}): "
                f"{self.say(msg)}",
                ServerRefused,
            )
        return data, content


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


def count(value: Any) -> int | None:
    """A count from the server, or None when it is missing, not an integer or out of range."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


# ---- links taken from tasks (images) ----------------------------------------------------------
REDIRECTS = {301, 302, 303, 307, 308}
RETRY_LATER = {408, 425, 429, 500, 502, 503, 504}


class ImageFailure(Exception):
    """A download that produced no file: why (one line), whether a later try may help, and how
    long the host asked to wait (Retry-After)."""

    def __init__(self, reason: str, *, retry: bool, after: float | None = None) -> None:
        super().__init__(reason)
        self.retry = retry
        self.after = after


@dataclass
class Download:
    url: str  # where the bytes came from, after redirects
    content_type: str  # as declared, without parameters
    size: int


class ImageClient:
    """The HTTP client for links found in tasks, which are untrusted input: http(s) only,
    public addresses only (`[images] allow_hosts` exempts hosts), checked at the socket for
    the first request and each redirect; at most `max_redirects` of those; a byte cap and a
    deadline on each download; no token or other credential is ever sent; its own rate limit,
    apart from the API's."""

    def __init__(
        self, settings: ImagesSettings, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        from sync.server.transport import public_only

        self.deadline = Deadline()
        limits = httpx.Limits(max_connections=settings.concurrency * 2)
        self.http = httpx.Client(
            headers={
                "User-Agent": "tasksync",
                "Accept": "image/*, video/*;q=0.9",
                "Accept-Encoding": "identity",  # images are compressed already
            },
            timeout=httpx.Timeout(settings.timeout_s, connect=min(10.0, settings.timeout_s)),
            transport=transport
            or DeadlineTransport(
                self.deadline,
                verify=True,
                limits=limits,
                policy=public_only(settings.allow_hosts),
            ),
            follow_redirects=False,
            trust_env=False,  # no proxy settings, no .netrc credentials
        )
        self.limiter = RateLimiter(settings.max_requests_per_second)
        self.max_bytes = int(settings.max_mb * 1024 * 1024)
        self.max_redirects = settings.max_redirects
        self.timeout_s = settings.timeout_s

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ImageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def download(self, url: str, sink: Any) -> Download:
        """Stream the file at `url` into `sink` (a binary file); ImageFailure otherwise."""
        current = url
        # One deadline for the whole download: name lookups, redirects and every read.
        deadline = time.monotonic() + self.timeout_s
        for _hop in range(self.max_redirects + 1):
            check_link(current)
            self.limiter.wait()
            self.deadline.at = deadline
            try:
                with self.http.stream("GET", current) as resp:
                    if resp.status_code in REDIRECTS:
                        where = resp.headers.get("location")
                        if not where:
                            raise ImageFailure("a redirect without a Location", retry=False)
                        current = urljoin(current, where)
                        continue
                    return self._body(resp, current, sink)
            except AddressRefused as exc:
                raise ImageFailure(f"refused: {exc}", retry=False) from None
            except (httpx.InvalidURL, UnicodeError) as exc:  # e.g. a host name IDNA refuses
                raise ImageFailure(f"not a valid link: {_first_line(exc)}", retry=False) from None
            except httpx.TimeoutException:
                raise ImageFailure(
                    f"no complete reply within {self.timeout_s:g} s", retry=True
                ) from None
            except httpx.RemoteProtocolError as exc:
                raise ImageFailure(
                    f"the connection broke off: {_first_line(exc)}", retry=True
                ) from None
            except httpx.HTTPError as exc:
                raise ImageFailure(
                    f"{type(exc).__name__}: {_first_line(exc)}", retry=True
                ) from None
            finally:
                self.deadline.at = None
        raise ImageFailure(f"more than {self.max_redirects} redirects", retry=False)

    def _body(self, resp: httpx.Response, url: str, sink: Any) -> Download:
        status = resp.status_code
        if status != 200:
            after = parse_retry_after(resp.headers.get("retry-after"))
            raise ImageFailure(f"HTTP {status}", retry=status in RETRY_LATER, after=after)
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ImageFailure(f"a compressed reply ({encoding}) instead of a file", retry=False)
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        declared = resp.headers.get("content-length", "")
        expected = int(declared) if declared.isascii() and declared.isdigit() else None
        if expected is not None and expected > self.max_bytes:
            raise ImageFailure(f"{expected} bytes announced, over max_mb", retry=False)
        size = 0
        try:
            for chunk in resp.iter_raw(CHUNK):
                size += len(chunk)
                if size > self.max_bytes:
                    raise ImageFailure(
                        f"more than {self.max_bytes} bytes, over max_mb", retry=False
                    )
                sink.write(chunk)
                if self.deadline.at is not None and time.monotonic() > self.deadline.at:
                    raise ImageFailure(f"no complete reply within {self.timeout_s:g} s", retry=True)
        except httpx.RemoteProtocolError:
            raise ImageFailure(
                f"truncated: {size} of {expected if expected is not None else '?'} bytes, "
                "the connection broke off",
                retry=True,
            ) from None
        if expected is not None and size != expected:
            raise ImageFailure(f"truncated: {size} of {expected} bytes", retry=True)
        return Download(url, ctype, size)


def check_link(url: str) -> None:
    """A link a task gave: http or https, a host, no credentials in it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ImageFailure("not a valid link", retry=False) from None
    if parts.scheme not in ("http", "https"):
        raise ImageFailure(f"not an http(s) link ({parts.scheme or 'no'} scheme)", retry=False)
    if not host:
        raise ImageFailure("a link without a host", retry=False)
    if parts.username is not None or parts.password is not None:
        raise ImageFailure("a link with credentials in it", retry=False)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]
