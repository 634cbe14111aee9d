"""A drift-aware walk over an id-desc, offset-paged task list.

While we read page q, new tasks push items down (we see repeats: harmless, saving is
idempotent) and removals pull items up over the page boundary (we would miss them). The walk
keeps a *cursor*: the last id of the contiguous prefix it has read, with the `totalElements` the
server reported when that page was read. Reading page q then falls into one of four cases:

* the cursor is on the page, or the page straddles where it was: contiguous;
* the whole page sorts above the cursor (many arrivals): everything on it is already covered,
  so the cursor jumps to the page's last id;
* the whole page sorts below the cursor: contiguous unless the list shrank since the cursor's
  page was read (total now < total then), in which case items may have slipped over the
  boundary: step back and re-read page q-1 (a *repair*);
* empty page: the end, unless the list shrank, in which case step back as well.

A walk that needs more than `max_backs` repairs in a row gives up repairing and says so
(`unrepaired`), so a sweep never marks tasks gone on the strength of an unsound walk. A page
that is not sorted by id makes drift undetectable (`verified = False`), with the same effect.

A list that never ends is stopped by `Runaway` (RunawayList): a page number past what the
server's own totals allow (by a margin), or the same page content several times in a row; a
whole list read as one stream, by `WholeRunaway`.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sync.errors import RunawayList
from sync.tasks.records import is_digits

REPEATS = 3  # the same page content this many times in a row ends a walk


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a walk stands: the next page to read and the last contiguous id before it."""

    page: int = 0
    last_id: str | None = None
    total: int | None = None


@dataclass
class WalkStats:
    fetches: int = 0
    repairs: int = 0
    unrepaired: bool = False
    verified: bool = True
    complete: bool = False


def id_key(tid: str) -> tuple[int, int, str]:
    """Server order for ids: numerically for ASCII digit strings, else as text. Numbers are
    compared by length and digits rather than through int(), which refuses more than 4,300
    digits (a hostile id would stop every walk)."""
    if is_digits(tid):
        digits = tid.lstrip("0")
        return (0, len(digits), digits)
    return (1, 0, tid)


class Listing(Protocol):
    """What the walker needs of a page (a client's ServerPage or the read side's ReadPage):
    its order keys (the task ids, or whatever else the family's list is sorted by)."""

    @property
    def keys(self) -> list[str]: ...

    @property
    def total(self) -> int | None: ...

    @property
    def last(self) -> bool: ...


P = TypeVar("P", bound=Listing)


class Runaway:
    """Stops a walk over a list that never ends (RunawayList), checked on each page read in
    order: past the page count the server's largest total implies, plus a margin (a live list
    grows while it is read), or the same ids as the page before on each step forward, without
    the total growing by a page, for `REPEATS` pages running; with no total, also pages that
    come round again (the ids of one of the last 16 pages)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.total = 0
        self.size = 0
        self.last: tuple[int, list[str], int | None] | None = None
        self.repeats = 0
        self.recent: collections.deque[tuple[str, ...]] = collections.deque(maxlen=16)

    def check(self, number: int, total: int | None, ids: list[str]) -> None:
        self.total = max(self.total, total or 0)
        self.size = max(self.size, len(ids))  # what the server really serves per page
        if total is not None and self.size:
            pages = math.ceil(self.total / self.size)
            if number >= pages + max(10, pages // 10):
                raise RunawayList(
                    f"{self.where}: the task list did not end: page {number} is past the "
                    f"{pages} pages its own total of {self.total} tasks makes; stopped"
                )
        # Only a step forward counts (a page read again after a step back may well repeat),
        # and only when arrivals cannot explain it: a whole page of new tasks pushes the same
        # tasks onto the next page, and the total then grows by at least a page.
        same = cycle = False
        forward = self.last is not None and number == self.last[0] + 1
        if forward and ids and self.last is not None and ids == self.last[1]:
            before = self.last[2]
            same = total is None or before is None or total - before < len(ids)
        elif forward and ids and total is None and tuple(ids) in self.recent:
            # Without a total nothing else bounds the walk: pages that come round again
            # (A, B, A, B ...) are a list that never ends, as one page over and over is.
            same = cycle = True
        self.repeats = self.repeats + 1 if same else 0
        self.last = (number, ids, total)
        if ids and (forward or number == 0):
            self.recent.append(tuple(ids))
        if self.repeats >= REPEATS - 1:
            what = "pages it had already returned" if cycle else f"the same {len(ids)} tasks"
            raise RunawayList(
                f"{self.where}: the task list did not end: the server returned {what} for "
                f"{REPEATS} pages in a row (up to page {number}); stopped"
            )


def _sorted_desc(ids: list[str]) -> bool:
    keys = [id_key(i) for i in ids]
    return all(a >= b for a, b in itertools.pairwise(keys))


def walk(
    fetch: Callable[[int], P],
    start: Cursor | None = None,
    stats: WalkStats | None = None,
    max_backs: int = 5,
    where: str = "walk",
) -> Iterator[tuple[P, Cursor]]:
    """Yield every page read, with the cursor to resume from once that page is saved."""
    st = stats if stats is not None else WalkStats()
    cur = start or Cursor()
    backs_in_row = 0
    runaway = Runaway(where)
    while True:
        page = fetch(cur.page)
        st.fetches += 1
        ids = page.keys
        if ids and not _sorted_desc(ids):
            st.verified = False
        if page.total is None:
            st.verified = False
        q, c = cur.page, cur.last_id
        shrank = (page.total is None or cur.total is None or page.total < cur.total) and st.verified
        if not ids:
            if q == 0 or c is None or not shrank:
                st.complete = True
                yield page, Cursor(q, c, page.total if page.total is not None else cur.total)
                return
            contiguous = False
        elif q == 0 or c is None or c in ids:
            contiguous = True
        elif id_key(ids[-1]) > id_key(c):
            contiguous = True  # the whole page is above the cursor: nothing new to cover
        elif id_key(ids[0]) < id_key(c):
            contiguous = not shrank
        else:
            contiguous = True  # the page straddles the cursor's place: the cursor was removed
        if not contiguous and backs_in_row >= max_backs:
            st.unrepaired = True
            contiguous = True
        if contiguous:
            backs_in_row = 0
            runaway.check(q, page.total, ids)
            nxt = Cursor(q + 1, ids[-1] if ids else c, page.total)
            yield page, nxt
            if page.last or not ids:
                st.complete = True
                return
            cur = nxt
        else:
            backs_in_row += 1
            st.repairs += 1
            back = Cursor(q - 1, c, cur.total)
            yield page, back
            cur = back


WHOLE_LIST_MAX = 2_000_000  # tasks in one whole-list snapshot (novicezk): ~250 MB of seen ids


class WholeRunaway:
    """The guard against a whole list (read as one stream) that never ends: batches that
    name only tasks this snapshot already held, three in a row (the same tasks over and
    over), or more than WHOLE_LIST_MAX different tasks (new ones without end)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.stale = 0

    def check(self, listed: set[str], seen: set[str]) -> None:
        """After a batch listing `listed`, with `seen` the tasks held before it: raise
        RunawayList when the list looks endless."""
        self.stale = self.stale + 1 if listed and listed <= seen else 0
        if self.stale >= 3 or len(seen) > WHOLE_LIST_MAX:
            why = (
                "names the same tasks over and over"
                if self.stale >= 3
                else f"holds more than {WHOLE_LIST_MAX:,} tasks"
            )
            raise RunawayList(
                f"{self.where}: the whole task list {why}: a list that never ends? (what it "
                "held so far is saved; nothing is marked gone)"
            )
