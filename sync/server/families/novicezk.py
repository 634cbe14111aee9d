"""novicezk/midjourney-proxy (open source): `GET /mj/task/list` answers with every task the
store holds, in one JSON array (no paging, no cap), from memory or Redis. It is parsed as a
stream (ijson), task object by task object, each bounded by max_response_mb, so memory stays
flat however long the list. A 401 with an empty body is a refused token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ijson

from sync.errors import BadResponse, printable
from sync.server.families.base import Family, Guarantees

if TYPE_CHECKING:
    from sync.server.client import Client

LIST_PATH = "/mj/task/list"
BATCH = 100  # tasks per batch handed on (as a page would be)
MAX_OPENS = 2_000  # [ and { in one task: real ones have tens; ijson's memory is depth squared


class NoviceZK(Family):
    """The whole list in one snapshot: no drift, and whatever it does not hold is gone."""

    name = "novicezk"
    guarantees = Guarantees(paged=False, drift_repair=False, gone="whole", by_ids=True)

    def whole(self, client: Client) -> Iterator[list[Any]]:
        where = f"source {client.source.name}: GET {client.base}{LIST_PATH}"
        with client.stream(LIST_PATH) as chunks:
            reader = _Bounded(chunks, client.max_bytes, where)
            batch: list[Any] = []
            try:
                for task in ijson.items(reader, "item", use_float=True):
                    reader.completed()
                    batch.append(task)
                    if len(batch) >= BATCH:
                        yield batch
                        batch = []
            except ijson.JSONError as exc:
                raise BadResponse(
                    f"{where}: the task list is not a whole JSON array ({printable(exc, 120)})"
                ) from None
            if batch:
                yield batch


class _Bounded:
    """The decoded reply as a file for ijson: it must start as a JSON array, and no more than
    `limit` bytes may pass without a task object completing (so one object is bounded, not
    the list)."""

    def __init__(self, chunks: Iterator[bytes], limit: int, where: str) -> None:
        self.chunks = chunks
        self.limit = limit
        self.where = where
        self.pending = b""
        self.since = 0
        self.opens = 0  # [ and { handed on since the last task completed
        self.started = False

    def completed(self) -> None:
        self.since = 0
        self.opens = 0

    def read(self, n: int) -> bytes:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return b""
            self.pending = chunk
            if not self.started:
                head = chunk.lstrip()
                if not head:
                    self.pending = b""
                    continue
                self.started = True
                if head[:1] != b"[":
                    what = "an HTML page" if head[:1] == b"<" else printable(head[:40])
                    raise BadResponse(f"{self.where}: expected a JSON array of tasks, got {what}")
        # Small reads (so a read never spans many whole objects), checked before ijson sees
        # them: a byte cap per task, and a cap on brackets per task, because ijson's memory
        # grows with the square of the nesting depth (a 64 KB `[[[[...` would take gigabytes).
        n = min(n, 65_536, max(1024, self.limit // 4))
        out, self.pending = self.pending[:n], self.pending[n:]
        self.since += len(out)
        self.opens += out.count(b"[") + out.count(b"{")
        if self.opens > MAX_OPENS:
            raise BadResponse(
                f"{self.where}: a task with more than {MAX_OPENS:,} nested or bracketed parts "
                "(no Midjourney task looks like that)"
            )
        if self.since > self.limit:
            raise BadResponse(
                f"{self.where}: one task object is larger than max_response_mb "
                f"({self.limit / 1048576:g} MB)"
            )
        return out
