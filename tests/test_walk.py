"""The drift-aware walker, against the simulator changing between every page request."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.server.families.plus import parse_page
from sync.server.pages import ServerPage
from sync.server.walk import Cursor, WalkStats, id_key, walk
from sync.simulator import Simulator

from .helpers import OPS, apply


def fetcher(sim: Simulator, size: int) -> object:
    import orjson

    def fetch(n: int) -> ServerPage:
        body = orjson.dumps({"pageNumber": n, "pageSize": size, "sort": "id,desc"})
        reply = sim.handle("POST", "/mj/task/query", {}, body)
        return parse_page(orjson.loads(reply.body), n, size, "sim")

    return fetch


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(5, 400), page=st.sampled_from([7, 10, 33, 100]), ops=OPS)
def test_walk_sees_every_task_listed_for_the_whole_walk(
    size: int, page: int, ops: list[tuple[str, int, int]]
) -> None:
    """Arrivals and removals between page requests never make a sound walk miss a task."""
    sim = Simulator(size, seed=size)
    start_ids = set(sim.listing())
    queue = list(ops)
    sim.on_request = lambda s: apply(s, queue.pop(0)) if queue else None
    seen: set[str] = set()
    stats = WalkStats()
    for pg, _cursor in walk(fetcher(sim, page), None, stats, max_backs=10**6):  # type: ignore[arg-type]
        seen.update(t["id"] for t in pg.tasks)
        assert stats.fetches < 50 + 4 * (size // page + len(ops)), "walk does not terminate"
    whole_walk = start_ids & set(sim.listing())
    assert stats.complete and stats.verified and not stats.unrepaired
    assert whole_walk <= seen, sorted(whole_walk - seen)[:5]


def test_walk_stable_list_reads_each_page_once() -> None:
    """Without drift the walk costs exactly one request per page."""
    sim = Simulator(1_000)
    stats = WalkStats()
    pages = [p for p, _ in walk(fetcher(sim, 100), None, stats)]  # type: ignore[arg-type]
    assert stats.fetches == len(pages) == 10 and stats.repairs == 0


def test_walk_resumes_from_cursor_without_refetching() -> None:
    """A cursor saved after page 4 resumes at page 5 with no repeat when nothing changed."""
    sim = Simulator(1_000)
    cursors = [c for _, c in walk(fetcher(sim, 100), None)]  # type: ignore[arg-type]
    resumed = WalkStats()
    rest = list(walk(fetcher(sim, 100), cursors[4], resumed))  # type: ignore[arg-type]
    assert resumed.fetches == 5 and rest[0][0].number == 5


def test_walk_repairs_a_removal_above_the_cursor() -> None:
    """Removing tasks already read pulls others over the boundary: the walk steps back."""
    sim = Simulator(300)
    removed = iter([None, lambda s: [s.remove(s.alive[-1 - k]) for k in range(5)]])

    def hook(s: Simulator) -> None:
        f = next(removed, None)
        if f:
            f(s)

    sim.on_request = hook
    start = set(sim.listing())
    stats = WalkStats()
    seen = {t["id"] for p, _ in walk(fetcher(sim, 100), None, stats) for t in p.tasks}  # type: ignore[arg-type]
    assert stats.repairs >= 1 and (start & set(sim.listing())) <= seen


def test_walk_flags_unsorted_pages() -> None:
    """A list not sorted by id cannot be checked for drift: the walk says so."""
    pages = [ServerPage(0, 2, [{"id": "1"}, {"id": "2"}], 2, True)]
    stats = WalkStats()
    list(walk(lambda n: pages[n], Cursor(), stats))
    assert not stats.verified


def test_id_key_orders_numeric_ids_by_value() -> None:
    """Digit ids of different lengths compare as numbers; other ids as text."""
    assert id_key("14001929738841620") > id_key("1689231405853400")
    assert id_key("b") > id_key("a")
