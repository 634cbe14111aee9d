"""Bounded HTTP underneath both clients (the task client, `sync.server.client`, and the image
client, `sync.images.client`): a deadline on the whole request, a byte cap on the reply.

httpx's `timeout` bounds each socket read, so a server that sends one byte a second keeps a
request alive forever, and a 300 KB gzip body can inflate to 300 MB in memory. Here:

* every socket connect, read and write of a request waits at most until that request's
  deadline (`Deadline`, per thread), through a network backend under httpx's connection pool;
* a reply is read raw and decompressed by `read_capped` with zlib's `max_length`, so no more
  than the cap plus one chunk is ever held, whatever the compression ratio;
* for links taken from tasks (images), an address policy (`public_only`) at the same socket
  layer: the host is resolved here and the connection made to the very address that was
  checked, for the first request and for every redirect, so neither a redirect nor a DNS
  answer that changes between check and use reaches a private address.

Also the mechanics both clients share: a rate limiter and the reading of Retry-After. Each
client brings its own policy (credentials, which addresses, retries); this module has none,
and knows nothing of task servers, families or databases.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import inspect
import ipaddress
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx

ACCEPT_ENCODING = "gzip, deflate"  # what `read_capped` can decode with a bound
CHUNK = 64 * 1024


class TooLarge(Exception):
    """The reply is larger than the cap."""


class BadEncoding(Exception):
    """A Content-Encoding we do not decode, or a corrupt compressed body."""


class Deadline(threading.local):
    """When the current thread's request must be done (time.monotonic), or None."""

    at: float | None = None

    def bound(self, timeout: float | None, kind: type[Exception]) -> float | None:
        """`timeout` shortened to what is left before the deadline; past it, raise `kind`."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise kind("the request's deadline passed")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class AddressRefused(Exception):
    """A link's host is, or resolves to, an address the policy refuses."""


# (host, port, timeout) -> the address to connect to, or raise
Policy = Callable[[str, int, float | None], str]


def _resolve(name: str, port: int, timeout: float | None) -> list[Any]:
    """getaddrinfo, waited for at most `timeout`. It has no timeout of its own, so it runs
    on a thread of its own: a slow answer for one name never holds up another name's lookup
    (a shared pool could be filled by a few hostile names), and the thread ends when the
    system resolver gives up."""
    done: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()

    def lookup() -> None:
        try:
            done.set_result(socket.getaddrinfo(name, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the waiting thread
            done.set_exception(exc)

    threading.Thread(target=lookup, name="tasksync-dns", daemon=True).start()
    return done.result(timeout=timeout)


def public_only(allow_hosts: Iterable[str] = ()) -> Policy:
    """Resolve the host and connect only when every address it has is public (not loopback,
    private, link-local, multicast, reserved or otherwise not globally routable); hosts in
    `allow_hosts` (names or addresses, as written in the link) are exempt."""
    exempt = {h.lower() for h in allow_hosts}

    def check(host: str, port: int, timeout: float | None = None) -> str:
        name = host.strip("[]").lower()
        try:
            infos = _resolve(name, port, timeout)
        except concurrent.futures.TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {name} took too long") from None
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {name}: {exc}") from None
        addresses = [str(info[4][0]) for info in infos]
        if name in exempt:
            return addresses[0]
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            for each in (*_embedded_ipv4(ip), ip):
                if not each.is_global or each.is_multicast:
                    raise AddressRefused(
                        f"{name} is {each}, not a public address (allow it with "
                        "[images] allow_hosts if it is yours)"
                    )
        return addresses[0]

    return check


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, which a gateway may deliver to: mapped
    (::ffff:a.b.c.d), compatible (::a.b.c.d), 6to4 (2002::/16), Teredo and NAT64."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    out = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        out += list(ip.teredo)
    if ip in _NAT64 or (ip in _COMPATIBLE and int(ip) > 1):  # not :: or ::1 themselves
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


class _Backend(httpcore.NetworkBackend):
    def __init__(self, deadline: Deadline, policy: Policy | None = None) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        # The address checked is the address connected to (TLS still verifies the name).
        target = host
        if self._policy is not None:
            target = self._policy(
                host, port, self._deadline.bound(timeout, httpcore.ConnectTimeout)
            )
        left = self._deadline.bound(timeout, httpcore.ConnectTimeout)  # what the lookup left
        inner = self._inner.connect_tcp(target, port, left, local_address, socket_options)
        return _Stream(inner, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, left, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport, over a connection pool whose sockets honour `deadline` (and,
    with `policy`, connect only where it allows).

    `options` are httpx.HTTPTransport's own (verify, limits, http2, local_address ...), checked
    by httpx. httpx offers no way to hand a network backend to the pool it builds, so the pool
    is built again with one, from the same options; an option that cannot be carried over
    (a proxy, whose own connection would bypass the deadline and the address policy) is
    refused with a ValueError instead of being dropped. It connects directly: proxy settings
    from the environment are not used."""

    def __init__(self, deadline: Deadline, *, policy: Policy | None = None, **options: Any) -> None:
        super().__init__(**options)  # httpx checks the options' names and values
        given = _TRANSPORT_OPTIONS.bind(**options)
        for name, value in given.arguments.items():
            if name not in _CARRIED and value != _TRANSPORT_OPTIONS.parameters[name].default:
                raise ValueError(f"DeadlineTransport: {name!r} is not supported")
        if policy is not None and given.arguments.get("uds") is not None:
            raise ValueError("DeadlineTransport: 'uds' would bypass the address policy")
        given.apply_defaults()
        o = given.arguments
        limits: httpx.Limits = o["limits"]
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(
                verify=o["verify"], cert=o["cert"], trust_env=o["trust_env"]
            ),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=o["http1"],
            http2=o["http2"],
            uds=o["uds"],
            local_address=o["local_address"],
            retries=o["retries"],
            socket_options=o["socket_options"],
            network_backend=_Backend(deadline, policy),
        )


# httpx.HTTPTransport's options, and those the rebuilt pool carries over (all but `proxy`).
_TRANSPORT_OPTIONS = inspect.signature(httpx.HTTPTransport.__init__).replace(
    parameters=list(inspect.signature(httpx.HTTPTransport.__init__).parameters.values())[1:]
)
_CARRIED = {
    "verify",
    "cert",
    "trust_env",
    "http1",
    "http2",
    "limits",
    "uds",
    "local_address",
    "retries",
    "socket_options",
}


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


class _Decoder:
    """Decompresses a Content-Encoding incrementally, never producing more than `room` bytes
    at a time (zlib's `max_length`), so a compression bomb inflates no further than the cap."""

    def __init__(self, encoding: str) -> None:
        enc = encoding.strip().lower()
        self.z: Any = None
        self.first = True
        self.raw_fallback = False
        if enc in ("", "identity"):
            return
        if enc in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            # Servers send zlib-wrapped or raw deflate under this name; try the former first.
            self.z = zlib.decompressobj()
            self.raw_fallback = True
        else:
            raise BadEncoding(f"Content-Encoding {enc!r} is not supported")

    def _step(self, data: bytes, most: int) -> bytes:
        try:
            out: bytes = self.z.decompress(data, most)
        except zlib.error as exc:
            if self.first and self.raw_fallback:
                self.z, self.raw_fallback = zlib.decompressobj(-zlib.MAX_WBITS), False
                return self._step(data, most)
            raise BadEncoding(f"corrupt compressed body ({exc})") from None
        self.first = False
        return out

    def feed(self, chunk: bytes, room: int) -> Iterator[bytes]:
        """The decoded bytes of `chunk`, stopping once more than `room` came out."""
        if self.z is None:
            yield chunk
            return
        data = chunk
        while data:
            out = self._step(data, room + 1)
            yield out
            room -= len(out)
            data = self.z.unconsumed_tail
            if room < 0 or self.z.eof:
                return

    def pieces(self, chunk: bytes, most: int) -> Iterator[bytes]:
        """All the decoded bytes of `chunk`, at most `most` at a time."""
        if self.z is None:
            yield chunk
            return
        data = chunk
        while data and not self.z.eof:
            yield self._step(data, most)
            data = self.z.unconsumed_tail


def read_capped(resp: httpx.Response, limit: int, deadline: Deadline) -> bytes:
    """The reply's decoded body, or TooLarge once it passes `limit` bytes; a deadline that
    passes while reading raises httpx.ReadTimeout."""
    if resp.is_stream_consumed:  # built in memory (a MockTransport's reply): already decoded
        if len(resp.content) > limit:
            raise TooLarge(f"more than {limit} bytes")
        return resp.content
    declared = resp.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            raise TooLarge(f"{int(declared)} bytes announced")
    decoder = _Decoder(resp.headers.get("content-encoding", ""))
    body = bytearray()
    for raw in resp.iter_raw(CHUNK):
        for part in decoder.feed(raw, limit - len(body)):
            body += part
            if len(body) > limit:
                raise TooLarge(f"more than {limit} bytes")
        if deadline.at is not None and time.monotonic() > deadline.at:
            raise httpx.ReadTimeout("the request's deadline passed")
    return bytes(body)


PIECE = 4 << 20  # the most one decompression step produces when a reply is streamed


def iter_decoded(resp: httpx.Response, deadline: Deadline, timeout_s: float) -> Iterator[bytes]:
    """A reply read as it comes (a whole task list), decoded in pieces of at most PIECE
    bytes; each raw chunk must arrive within `timeout_s`, while the reply as a whole may take
    as long as it takes. What to hold of it is the caller's to bound."""
    decoder = _Decoder(resp.headers.get("content-encoding", ""))
    chunks = resp.iter_raw(CHUNK)
    while True:
        deadline.at = time.monotonic() + timeout_s  # for this read, not for the caller's work
        raw = next(chunks, None)
        if raw is None:
            return
        yield from decoder.pieces(raw, PIECE)
