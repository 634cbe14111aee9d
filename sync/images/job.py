"""The image job: find the picture and video links of archived tasks, fetch them (soonest-
expiring first) into a folder laid out by content hash, verify each file, and record it
(`task_images`). Separate from the task sync: its own client, rate limit and schedule.

Files: `DIR/ab/abcdef….png`, named by their SHA-256, so identical bytes are stored once. A
download streams into `DIR/.tmp/`, is checked (size, declared and sniffed type an image or a
video) and fsynced, then renamed into place: a kill leaves no partial file under its final
name, and the next run fetches it again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import orjson

from sync.archive.images import Link, Outcome, Slot
from sync.archive.store import Store
from sync.config import ImagesSettings, SourceSettings
from sync.errors import ConfigError, printable
from sync.images.client import ImageClient, ImageFailure
from sync.tasks.records import join

log = logging.getLogger("tasksync.images")

SCAN_OVERLAP = timedelta(hours=1)  # tasks changed this long before a scan are looked at again
RETRY_FIRST_S = 60.0  # a failed try is repeated after 1 min, 2, 4 ... (or the host's Retry-After)
RETRY_MAX_S = 6 * 3600.0
STALE_TMP_S = 3600.0  # partial downloads older than this (a killed run's) are removed
BATCH = 200
YIELD_MAX_S = 10.0  # the longest a download waits for a task sync in the same process to end
HEAD = 256 * 1024  # how much of a file is read to sniff its type and size

# (magic test, MIME type, extension); the first that matches names the file's type.
SIGNATURES: list[tuple[Callable[[bytes], bool], str, str]] = [
    (lambda h: h.startswith(b"\x89PNG\r\n\x1a\n"), "image/png", ".png"),
    (lambda h: h.startswith(b"\xff\xd8\xff"), "image/jpeg", ".jpg"),
    (lambda h: h[:6] in (b"GIF87a", b"GIF89a"), "image/gif", ".gif"),
    (lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP", "image/webp", ".webp"),
    (lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"avif", b"avis"), "image/avif", ".avif"),
    (lambda h: h[4:8] == b"ftyp", "video/mp4", ".mp4"),
    (lambda h: h.startswith(b"\x1a\x45\xdf\xa3"), "video/webm", ".webm"),
]


# ---- links ----------------------------------------------------------------------------------
def expiry(url: str) -> datetime | None:
    """When a signed link stops working, from its `ex=` parameter (hex epoch seconds, as
    Discord's CDN writes it), or None."""
    try:
        value = dict(parse_qsl(urlsplit(url).query)).get("ex", "")
        seconds = int(value, 16) if 0 < len(value) <= 12 else 0
    except ValueError:
        return None
    if not 0 < seconds < 253402300799:
        return None
    return datetime.fromtimestamp(seconds, UTC)


def _items(value: Any) -> list[Any]:
    """A list of links: a list, or a JSON list inside a string (new-api)."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return []
    return value if isinstance(value, list) else []


def _url(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("url")
    return value.strip() if isinstance(value, str) and value.strip() else None


def links_of(obj: dict[str, Any], base_url: str, roles: Iterable[str]) -> list[tuple[str, str]]:
    """(role, url) of every picture and video a task object links to, in a fixed order;
    a link relative to the server (new-api's `/mj/image/…`) is made absolute."""
    grid = _items(obj.get("imageUrls"))
    videos = _items(obj.get("videoUrls")) + _items(obj.get("video_urls"))
    found: list[tuple[str, Any]] = [
        ("image", obj.get("imageUrl")),
        ("image", obj.get("image_url")),
        *(("grid", g) for g in grid),
        ("thumbnail", obj.get("thumbnailUrl")),
        *(("thumbnail", g.get("thumbnail")) for g in grid if isinstance(g, dict)),
        ("video", obj.get("videoUrl")),
        ("video", obj.get("video_url")),
        *(("video", v) for v in videos),
        *(("thumbnail", v.get("thumbnail")) for v in videos if isinstance(v, dict)),
    ]
    wanted = set(roles)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for role, value in found:
        url = _url(value)
        if url is None or role not in wanted or url in seen:
            continue
        seen.add(url)
        if url.startswith("/") and not url.startswith("//"):
            url = urljoin(base_url.rstrip("/") + "/", url)
        out.append((role, url))
    return out


def discover(
    store: Store, source: str, base_url: str, settings: ImagesSettings, now: datetime
) -> int:
    """Add the slots of tasks that changed since the last scan (every task, the first time);
    returns how many slots are new or have a new link."""
    since = store.images.watermark(source)
    total = 0
    for rows in store.images.changed_tasks(source, since, settings.statuses):
        links: list[Link] = []
        for row in rows:
            counter: dict[str, int] = {}
            obj = join(row)
            for role, url in links_of(obj, base_url, settings.roles):
                n = counter.get(role, 0)
                counter[role] = n + 1
                links.append(Link(row["id"], role, n, url, expiry(url), row["submit_time"]))
        added, relinked = store.images.add_links(source, links, now)
        total += added + relinked
    store.images.set_watermark(source, now - SCAN_OVERLAP, now)
    return total


# ---- files ----------------------------------------------------------------------------------
def sniff(head: bytes) -> tuple[str, str] | None:
    """(MIME type, extension) from a file's first bytes, or None when it is not a picture or
    video tasksync knows."""
    for test, mime, ext in SIGNATURES:
        if test(head):
            return mime, ext
    return None


def dimensions(head: bytes, mime: str) -> tuple[int | None, int | None]:
    """Width and height where the header says them cheaply (PNG, GIF, WebP, JPEG)."""
    try:
        if mime == "image/png" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return int(w), int(h)
        if mime == "image/gif":
            w, h = struct.unpack("<HH", head[6:10])
            return int(w), int(h)
        if mime == "image/webp":
            kind = head[12:16]
            if kind == b"VP8X":
                return (
                    1 + int.from_bytes(head[24:27], "little"),
                    1 + int.from_bytes(head[27:30], "little"),
                )
            if kind == b"VP8L":
                bits = int.from_bytes(head[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if kind == b"VP8 ":
                w, h = struct.unpack("<HH", head[26:30])
                return int(w & 0x3FFF), int(h & 0x3FFF)
        if mime == "image/jpeg":
            return _jpeg_size(head)
    except struct.error:
        pass
    return None, None


def _jpeg_size(head: bytes) -> tuple[int | None, int | None]:
    i = 2
    while i + 9 <= len(head):
        if head[i] != 0xFF:
            i += 1
            continue
        marker = head[i + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
            h, w = struct.unpack(">HH", head[i + 5 : i + 9])
            return int(w), int(h)
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        i += 2 + int.from_bytes(head[i + 2 : i + 4], "big")
    return None, None


@dataclass
class Folder:
    """The images folder: `.tmp/` for downloads under way, `ab/<sha256><ext>` for files."""

    root: Path

    def __post_init__(self) -> None:
        self.tmp = self.root / ".tmp"
        self.moved: set[Path] = set()  # folders with renames not yet fsynced

    def ready(self) -> None:
        """Make the folder, and remove what a killed run left in `.tmp` (downloads of a
        process that is gone, or older than an hour)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TMP_S
        for part in self.tmp.glob("*.part"):
            pid = part.name.split("-", 1)[0]
            try:
                if not _alive(int(pid)) or part.stat().st_mtime < cutoff:
                    part.unlink()
            except (OSError, ValueError):
                pass

    def temp(self) -> Path:
        return self.tmp / f"{os.getpid()}-{uuid.uuid4().hex}.part"

    @staticmethod
    def relative(sha: str, ext: str) -> str:
        return f"{sha[:2]}/{sha}{ext}"

    def keep(self, temp: Path, sha: str, ext: str) -> str:
        """Move a verified download into place, atomically."""
        rel = self.relative(sha, ext)
        final = self.root / rel
        # Replaced even when a file of that name is there: the bytes just verified are right,
        # while the file there may have been damaged since (`images verify` says so).
        final.parent.mkdir(exist_ok=True)
        os.replace(temp, final)
        self.moved.add(final.parent)
        return rel

    def sync(self) -> None:
        """Make the renames since the last call durable (one fsync per folder touched, done
        before their rows say `fetched`)."""
        while self.moved:
            folder = self.moved.pop()
            try:
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Sink:
    """A temporary file that hashes what is written to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("wb")
        self.sha = hashlib.sha256()
        self.head = bytearray()

    def write(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        if len(self.head) < HEAD:
            self.head += chunk[: HEAD - len(self.head)]
        self.file.write(chunk)

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def drop(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def fetch_one(client: ImageClient, folder: Folder, slot: Slot, settings: ImagesSettings) -> Outcome:
    """One try at one slot, its outcome to record. It never raises: whatever one link or its
    host does fails that slot alone, and no temporary file outlives the try."""
    now = datetime.now(UTC)
    attempts = slot.attempts + 1
    try:
        sink = _Sink(folder.temp())
    except OSError as exc:  # the folder: full, gone, not writable
        return _failed(slot, attempts, f"cannot write: {exc.strerror}", True, None, now, settings)
    try:
        got = client.download(slot.url, sink)
        if not got.content_type.startswith(("image/", "video/")):
            raise ImageFailure(
                f"not an image or video: declared {got.content_type or 'no type'}", retry=False
            )
        kind = sniff(bytes(sink.head))
        if kind is None:
            raise ImageFailure(
                f"not an image or video: the bytes are no known picture or video format "
                f"(declared {got.content_type})",
                retry=False,
            )
        sink.finish()
        mime, ext = kind
        sha = sink.sha.hexdigest()
        width, height = dimensions(bytes(sink.head), mime)
        path = folder.keep(sink.path, sha, ext)
    except ImageFailure as exc:
        return _failed(slot, attempts, str(exc), exc.retry, exc.after, now, settings)
    except OSError as exc:  # the folder: full, gone, not writable
        return _failed(slot, attempts, f"cannot write: {exc.strerror}", True, None, now, settings)
    except Exception as exc:  # one link must never stop the others
        why = f"unexpected {type(exc).__name__}: {printable(str(exc))}"
        log.warning("image %s: %s", slot.id, why)
        log.debug("image %s", slot.id, exc_info=True)
        return _failed(slot, attempts, why, False, None, now, settings)
    finally:
        sink.drop()  # a no-op once the file was moved into place
    return Outcome(
        slot.id,
        slot.url,
        "fetched",
        attempts,
        sha256=sha,
        size=got.size,
        content_type=mime,
        width=width,
        height=height,
        path=path,
        fetched_at=now,
    )


def _failed(
    slot: Slot,
    attempts: int,
    why: str,
    retry: bool,
    after: float | None,
    now: datetime,
    settings: ImagesSettings,
) -> Outcome:
    if slot.expires_at is not None and slot.expires_at <= now:
        # Tried once after its link's own expiry: recorded, never retried.
        return Outcome(slot.id, slot.url, "expired", attempts, error=f"link expired: {why}")
    if not retry or attempts >= settings.max_attempts:
        return Outcome(slot.id, slot.url, "failed", attempts, error=why)
    wait = min(RETRY_FIRST_S * 2 ** (attempts - 1), RETRY_MAX_S)
    if after is not None:
        wait = min(max(wait, after), RETRY_MAX_S)
    return Outcome(
        slot.id, slot.url, "pending", attempts, error=why, next_try_at=now + timedelta(seconds=wait)
    )


@dataclass
class ImageRun:
    """What one run of the image job did."""

    found: int = 0
    fetched: int = 0
    failed: int = 0
    expired: int = 0
    later: int = 0  # to be tried again
    bytes: int = 0
    seconds: float = 0.0
    states: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"images: {self.found} new links, {self.fetched} fetched ({self.bytes / 1e6:.1f} MB), "
            f"{self.later} to retry, {self.failed} failed, {self.expired} expired, "
            f"{self.seconds:.1f}s"
        )


def run(
    store: Store,
    settings: ImagesSettings,
    sources: Iterable[tuple[str, str]],
    *,
    client: ImageClient | None = None,
    limit: int | None = None,
    progress: Callable[[int, int, int | None], None] | None = None,
    stop: threading.Event | None = None,
    yield_to: Callable[[], bool] | None = None,
) -> ImageRun:
    """Find new links in each (source name, base URL), then fetch what is due, soonest-
    expiring first, `concurrency` at a time, until nothing is due, `limit` slots were tried
    or `stop` is set. While `yield_to()` is true (a task sync runs in the same process), no
    new download starts, for at most YIELD_MAX_S at a time."""
    t0 = time.monotonic()
    report = ImageRun()
    names = []
    now = datetime.now(UTC)
    for name, base in sources:
        names.append(name)
        report.found += discover(store, name, base, settings, now)
    folder = Folder(settings.dir)
    try:
        folder.ready()
    except OSError as exc:
        raise ConfigError(f"[images] dir {settings.dir}: {exc.strerror or exc}") from None
    pending = sum(store.images.counts(n)["pending"] for n in names)
    total = pending if limit is None else min(limit, pending)
    own = client is None
    client = client or ImageClient(settings)
    tried = batches = 0

    def one(slot: Slot) -> Outcome:
        _after(yield_to, stop)
        return fetch_one(client, folder, slot, settings)

    try:
        with ThreadPoolExecutor(settings.concurrency, thread_name_prefix="tasksync-img") as pool:
            for batch in _due_batches(store, names, limit):
                if stop is not None and stop.is_set():
                    break
                outcomes = list(pool.map(one, batch))
                folder.sync()
                store.images.record(outcomes)
                for o in outcomes:
                    _count(report, o)
                tried += len(batch)
                batches += 1
                if progress is not None:
                    progress(batches, tried, total)
                if limit is not None and tried >= limit:
                    break
    finally:
        if own:
            client.close()
    report.seconds = time.monotonic() - t0
    return report


def _after(busy: Callable[[], bool] | None, stop: threading.Event | None) -> None:
    """Wait while `busy()` (at most YIELD_MAX_S: syncs that never pause still let pictures
    through, slowly) or until `stop`."""
    if busy is None:
        return
    until = time.monotonic() + YIELD_MAX_S
    pause = stop or threading.Event()
    while busy() and time.monotonic() < until and not pause.wait(0.05):
        pass


def _due_batches(store: Store, names: list[str], limit: int | None) -> Iterator[list[Slot]]:
    """Due slots of the given sources, a batch at a time, until none is due. A failed try is
    not due again before its backoff (a minute at least), so this ends."""
    handed = 0
    while limit is None or handed < limit:
        size = BATCH if limit is None else min(BATCH, limit - handed)
        batch = store.images.due(datetime.now(UTC), size, names)
        if not batch:
            return
        handed += len(batch)
        yield batch


def _count(report: ImageRun, o: Outcome) -> None:
    if o.state == "fetched":
        report.fetched += 1
        report.bytes += o.size or 0
    elif o.state == "failed":
        report.failed += 1
    elif o.state == "expired":
        report.expired += 1
    else:
        report.later += 1


# ---- verify ---------------------------------------------------------------------------------
@dataclass
class Verified:
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)


def require_folder(settings: ImagesSettings) -> None:
    """`[images] dir` may be missing (it is made) but not something other than a folder."""
    if settings.dir.exists() and not settings.dir.is_dir():
        raise ConfigError(f"[images] dir {settings.dir}: not a folder")


def verify(store: Store, settings: ImagesSettings) -> Verified:
    """Re-hash every fetched file: those missing from the folder, and those whose bytes no
    longer hash to their name."""
    require_folder(settings)
    out = Verified()
    for sha, path, _size in store.images.files():
        full = settings.dir / path
        try:
            digest = hashlib.sha256()
            with full.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            out.missing.append(path)  # a folder in its place is no file either
            continue
        except OSError:
            out.corrupted.append(path)  # there, but it cannot be read
            continue
        if digest.hexdigest() != sha:
            out.corrupted.append(path)
        else:
            out.ok += 1
    return out


def sources_of(sources: Iterable[SourceSettings]) -> list[tuple[str, str]]:
    """The (name, base_url) of each source whose tasks' links the job looks at (a relative
    link is taken relative to its source's base_url)."""
    return [(s.name, s.base_url) for s in sources]
