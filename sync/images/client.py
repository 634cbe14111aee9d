"""The image client: the HTTP client for the links tasks carry (pictures, videos), which are
untrusted input. http(s) only, public addresses only (checked at the socket, for the first
request and each redirect), a byte cap and a deadline on each download, its own rate limit,
and no credential of any kind: no token, no proxy settings or .netrc from the environment.

It shares only mechanics with the task client (`sync.server.transport`), never its policy:
it never sends a source's token and never talks to a task server's API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx

from sync.server.transport import (
    CHUNK,
    AddressRefused,
    Deadline,
    DeadlineTransport,
    RateLimiter,
    parse_retry_after,
    public_only,
)

if TYPE_CHECKING:
    from sync.config import ImagesSettings

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
