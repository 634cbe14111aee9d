"""The task client, the only door to a task server: one source's HTTP client, with its
credential, a deadline per request and a byte cap per reply (`transport`), retries (stamina,
one loop for every request), a per-source rate limit and strict response checks. Which
endpoints hold the task list, and how their replies read, is the source's family adapter
(`families`), which `connect` hands the client and which makes its requests through it.

It returns parsed task objects (dicts, as the server sent them) inside `ServerPage`s; it never
hands out raw HTTP responses, never puts the token in a message, and shows what the server
says only through `Client.say` (one printable line, the token scrubbed). It never uses proxy
settings or credentials from the environment (`trust_env=False`).

The links tasks carry (images, videos) have a client of their own, with the opposite rules:
`sync.images.client`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson
import stamina

if TYPE_CHECKING:  # the fetch process runs this module without loading pydantic
    from sync.config import SourceSettings
    from sync.server.families.base import Family
    from sync.server.pages import ServerPage

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
from sync.server.families.adapters import named
from sync.server.pages import loads
from sync.server.transport import (
    ACCEPT_ENCODING,
    BadEncoding,
    Deadline,
    DeadlineTransport,
    RateLimiter,
    TooLarge,
    iter_decoded,
    parse_retry_after,
    read_capped,
)
from sync.tasks.records import MJ, SHAPES, Shape, task_id

log = logging.getLogger("tasksync.client")

RETRY_STATUSES = {429, 500, 502, 503, 504}
BY_IDS_MAX = 100
QUICK_S = 5.0  # the most a quick look (`connect_quick`) waits for its one request
_T = TypeVar("_T")


class _Transient(ServerError):
    """A failure worth retrying; `retry_after` is the server's wish, in seconds."""

    def __init__(
        self, message: str, final: type[ServerError], retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.final = final  # what to raise once retries are exhausted
        self.retry_after = retry_after


class Client:
    """One source's HTTP client; `family` (an adapter from `sync.server.families`, handed in
    by `connect`, or found later by probing) knows its API."""

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
            trust_env=False,  # no proxy settings, no .netrc credentials
        )
        self.limiter = RateLimiter(source.max_requests_per_second)
        self.wait_initial = wait_initial
        self.wait_max = wait_max
        self.max_bytes = int(source.max_response_mb * 1024 * 1024)
        self.requests = 0
        self.retries = 0
        self._count_lock = threading.Lock()
        self.family = family

    @property
    def spawn_args(self) -> tuple[Any, ...] | None:
        """What a fetch process needs, besides the walk's settings, to open the same client:
        the token, the waits, and the family with what it learned (none with a custom
        transport, which cannot cross a process boundary)."""
        if self._reopen is None or self.family is None:
            return None
        return (*self._reopen, self.family.name, self.family.state())

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
        where = f"source {self.source.name}: {method} {url}"
        content = None if body is None else orjson.dumps(body)
        extra = {"Content-Type": "application/json"} if body is not None else None

        def once(give_up: float) -> tuple[Any, bytes]:
            try:
                with contextlib.ExitStack() as stack:
                    resp = self._open(stack, method, url, where, give_up, content, params, extra)
                    raw = read_capped(resp, self.max_bytes, self.deadline)
            except (httpx.HTTPError, OSError, TooLarge, BadEncoding) as exc:
                raise self._failure(exc, where) from None
            finally:
                self.deadline.at = None
            return self._parse(raw, resp, where)

        return self._retried(once, probe=probe)

    @contextlib.contextmanager
    def stream(self, path: str) -> Iterator[Iterator[bytes]]:
        """A GET whose reply is read as it comes (a whole task list): the decoded bytes in
        chunks. Opening it is retried like any request; each chunk must come within
        `timeout_s` (the reply as a whole may take longer), and the family bounds what it
        holds (each task object within max_response_mb)."""
        url = self.base + path
        where = f"source {self.source.name}: GET {url}"

        def opened(give_up: float) -> tuple[contextlib.ExitStack, httpx.Response]:
            stack = contextlib.ExitStack()
            try:
                return stack, self._open(stack, "GET", url, where, give_up, None, None, None)
            except BaseException:
                stack.close()
                self.deadline.at = None
                raise

        stack, resp = self._retried(opened, probe=False)
        with stack:
            try:
                yield iter_decoded(resp, self.deadline, self.source.timeout_s)
            except (httpx.HTTPError, OSError, BadEncoding) as exc:
                failure = self._failure(exc, where)
                if isinstance(failure, _Transient):  # the list was under way: not retried
                    raise failure.final(str(failure)) from None
                raise failure from None
            finally:
                self.deadline.at = None

    def _retried(self, attempt_once: Callable[[float], _T], *, probe: bool) -> _T:
        """`attempt_once(give_up)`, tried again after a transient failure (a 429 or 5xx, a
        dropped connection, a timeout, a reply that is not JSON, success=false) with
        exponential backoff and jitter, honouring Retry-After, within `retry_attempts` and
        `retry_budget_s`: the one retry loop of every request. With `probe`, one attempt."""
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
                        return attempt_once(give_up)
                    except _Transient as exc:
                        last = exc
                        raise
        except _Transient as exc:
            raise exc.final(f"{exc}{'' if probe else ' (gave up after retries)'}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The credential (the family's own way, else the configured `auth_header`) and
        `extra`."""
        headers: dict[str, str] = {}
        if self.token:
            own = getattr(self.family, "auth", None)
            if own is not None:
                headers = own(self.token, self.source)
            elif self.source.auth_header == "Authorization":
                headers = {"Authorization": f"Bearer {self.token}"}
            else:
                headers = {"mj-api-secret": self.token}
        if extra:
            headers.update(extra)
        return headers

    def _open(
        self,
        stack: contextlib.ExitStack,
        method: str,
        url: str,
        where: str,
        give_up: float,
        content: bytes | None,
        params: dict[str, Any] | None,
        extra: dict[str, str] | None,
    ) -> httpx.Response:
        """Send one request (rate-limited, counted, under its deadline) and check its status;
        the reply, still unread, is closed with `stack`."""
        self.limiter.wait()
        with self._count_lock:
            self.requests += 1
        left = max(0.001, min(self.source.timeout_s, give_up - time.monotonic()))
        self.deadline.at = time.monotonic() + left
        try:
            resp = stack.enter_context(
                self.http.stream(
                    method,
                    url,
                    content=content,
                    params=params,
                    headers=self._headers(extra),
                    timeout=httpx.Timeout(left, connect=min(10.0, left)),
                )
            )
            self._check_status(resp, where)
        except (httpx.HTTPError, OSError, TooLarge, BadEncoding) as exc:
            raise self._failure(exc, where) from None
        return resp

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


def connect(
    src: SourceSettings,
    *,
    token: str | None = None,
    transport: httpx.BaseTransport | None = None,
    wait_initial: float = 0.5,
    wait_max: float = 30.0,
) -> Client:
    """The client of a configured source, handed its family's adapter from the registry
    (none yet for `api = "auto"`: probing finds it) and its token, read and checked now
    unless given: how the command line, the daemon, the demo and the tests open one. (The
    fetch process reopens its parent's.) `transport`, `wait_initial`, `wait_max`: for tests."""
    return Client(
        src,
        token=src.token() if token is None else token,
        transport=transport,
        wait_initial=wait_initial,
        wait_max=wait_max,
        family=named(src.api),
    )


def connect_quick(src: SourceSettings) -> Client:
    """A client for one quick, read-only look at a server (`config check`'s probes, the lag
    `status` shows): each request gets one attempt and at most QUICK_S seconds."""
    quick = src.model_copy(
        update={
            "timeout_s": min(src.timeout_s, QUICK_S),
            "retry_attempts": 1,
            "retry_budget_s": min(src.retry_budget_s, QUICK_S),
        }
    )
    return connect(quick)
