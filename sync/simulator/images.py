"""How the simulator serves task pictures and videos (for the image job's tests, demo and
benchmark): small generated PNGs and a short MP4 at Discord-style signed links
(`?ex=<hex expiry>&is=<hex issued>&hm=<signature>`) that stop working when they expire, with
faults a CDN shows (429, 500, a body cut short, an HTML page instead of the file), and a
record of the headers each request came with.

Links are part of the task (so they never change between polls); their expiry is real time:
`epoch` (the simulator's start) plus `ttl_s`, spread over an hour, or already past for the
`expired_per_mille` share of tasks.
"""

from __future__ import annotations

import hashlib
import random
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from sync.simulator.server import Reply

if TYPE_CHECKING:
    from sync.simulator.core import Simulator

PALETTE = [
    (0xE5, 0x39, 0x35),
    (0x1E, 0x88, 0xE5),
    (0x43, 0xA0, 0x47),
    (0xFB, 0x8C, 0x00),
    (0x8E, 0x24, 0xAA),
    (0x00, 0xAC, 0xC1),
    (0x6D, 0x4C, 0x41),
    (0x54, 0x6E, 0x7A),
]
GRID_ACTIONS = ("IMAGINE", "VARIATION", "ZOOM", "PAN")


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def mp4(seed: int) -> bytes:
    """The start of an MP4 file (`ftyp` and an `mdat` of filler): enough to be one by its
    bytes, distinct per seed."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
    data = bytes((seed * 31 + n) % 251 for n in range(2048))
    return ftyp + struct.pack(">I", 8 + len(data)) + b"mdat" + data


@dataclass
class ImageFaults:
    """Per-request probabilities of a fault on an image link."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    truncated: float = 0.0
    wrong_type: float = 0.0


class Images:
    """The simulator's CDN: which links each task has, and answers for them."""

    def __init__(
        self,
        sim: Simulator,
        *,
        base: str = "http://sim.test",
        ttl_s: int = 86_400,
        expired_per_mille: int = 0,
        faults: ImageFaults | None = None,
        seed: int = 0,
    ) -> None:
        self.sim = sim
        self.base = base
        self.ttl_s = ttl_s
        self.expired_per_mille = expired_per_mille
        self.faults = faults or ImageFaults()
        self.epoch = int(time.time())
        self.rng = random.Random(seed * 31 + 5)
        self.requests: deque[tuple[str, dict[str, str]]] = deque(maxlen=100_000)
        self.served = 0

    # ---- links ----------------------------------------------------------------------------
    def _sign(self, path: str, ex: int) -> str:
        return hashlib.sha256(f"{path}:{ex}".encode()).hexdigest()

    def link(self, i: int, h: int, name: str) -> str:
        expired = h % 1000 < self.expired_per_mille
        ex = self.epoch - 3600 if expired else self.epoch + self.ttl_s + h % 3600
        path = f"/attachments/{self.sim.task_id(i)}/{name}"
        return f"{self.base}{path}?ex={ex:x}&is={self.epoch - 60:x}&hm={self._sign(path, ex)}&"

    def add(self, task: dict[str, Any], i: int, h: int, action: str) -> None:
        """The links of a finished task: its image, for some a grid of four parts with
        thumbnails (as trueai lists them), for some a video."""
        task["imageUrl"] = self.link(i, h, "grid_0.png")
        if action in GRID_ACTIONS and h % 10 == 0:
            task["imageUrls"] = [
                {
                    "url": self.link(i, h, f"part_{k}.png"),
                    "thumbnail": self.link(i, h, f"part_{k}_t.png"),
                }
                for k in range(4)
            ]
        if h % 20 == 1:
            task["videoUrl"] = self.link(i, h, "video.mp4")

    # ---- answers --------------------------------------------------------------------------
    def handle(self, target: str, headers: dict[str, str]) -> Reply:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        self.requests.append((target, dict(headers)))
        if parts.path == "/redirect":  # for tests: a link that sends the client elsewhere
            return Reply(302, b"", "text/plain", {"Location": query.get("to", "/")})
        segments = parts.path.split("/")
        if len(segments) != 4 or segments[1] != "attachments":
            return Reply(404, b"Not Found", "text/plain")
        i = self.sim.index_of(segments[2])
        try:
            ex = int(query.get("ex", ""), 16)
        except ValueError:
            ex = -1
        if i is None or query.get("hm") != self._sign(parts.path, ex):
            return Reply(403, b"This content is no longer available.", "text/plain")
        if ex < time.time():
            return Reply(404, b"This content is no longer available.", "text/plain")
        fault = self._fault()
        if fault is not None:
            return fault
        name = segments[3]
        h = i * 2654435761 % 2**32
        if name.endswith(".mp4"):
            return Reply(200, mp4(i), "video/mp4")
        size = 8 if name.endswith("_t.png") else 32
        self.served += 1
        return Reply(200, png(size, size, PALETTE[h % len(PALETTE)]), "image/png")

    def _fault(self) -> Reply | None:
        f, r = self.faults, self.rng.random()
        body = png(32, 32, PALETTE[0])
        options = [
            (f.rate_limit, Reply(429, b"", "text/plain", {"Retry-After": "1"})),
            (f.server_error, Reply(500, b"<html>Internal Server Error</html>", "text/html")),
            (f.truncated, Reply(200, body[: len(body) // 2], "image/png", length=len(body))),
            (f.wrong_type, Reply(200, b"<!doctype html><title>Login</title>", "text/html")),
        ]
        for rate, reply in options:
            if r < rate:
                return reply
            r -= rate
        return None
