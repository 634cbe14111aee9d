"""Every server family, through its adapter, over a real loopback server into real databases:
the archive equals what the server lists (with arrivals and updates during walks), gone tasks
are decided as each family allows, relays refresh the ids they are given, and `api = "auto"`
finds the family with read-only probes only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sync.archive import sources
from sync.archive.models import Task, TaskEvent
from sync.archive.store import Store
from sync.errors import AuthRefused, BadResponse, ConfigError, ServerRefused
from sync.jobs import pipeline
from sync.server.client import connect
from sync.server.families.adapters import named
from sync.server.families.probing import detect
from sync.simulator import Simulator, SimulatorServer
from sync.simulator.apis import APIS

from .helpers import (
    HostileServer,
    Run,
    archive,
    assert_archive_equals_truth,
    count,
    http_reply,
    source_for,
    write_config,
)

PAGED = ["plus", "trueai", "newapi"]
LISTED = [*PAGED, "novicezk"]
# The endpoints tasksync may ever call: lists and lookups. Anything else would be a write.
READS = {
    ("POST", "/mj/task/query"),
    ("POST", "/mj/admin/tasks"),
    ("GET", "/api/mj/self"),
    ("GET", "/mj/task/list"),
    ("POST", "/mj/task/list-by-condition"),
}


def family_source(url: str, api: str, **kw: Any) -> Any:
    return source_for(url, api=api, **kw)


@pytest.mark.parametrize("api", LISTED)
def test_family_archive_equals_truth_with_drift(
    db_url_sp: str, api: str, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """Arrivals and status changes between requests, a backfill, syncs, then a quiet sweep:
    the archive equals what the family's server lists, field by field, and nothing twice."""
    store = Store(db_url_sp)
    from sync.archive import schema

    schema.upgrade(store)
    sim = Simulator(1_200, seed=31, api=api, arrivals_per_request=0.6, updates_per_request=1.5)
    src = family_source(serve(sim).url, api)
    with connect(src) as client:
        first = pipeline.backfill(store, client, src)
        assert first.outcome == "ok" and first.api == api
        for _ in range(3):
            pipeline.incremental(store, client, src)
        sim.arrivals_per_request = sim.updates_per_request = 0
        last = pipeline.sweep(store, client, src)
    assert last.outcome == "ok", last.notes
    assert_archive_equals_truth(store, sim)
    with store.engine.connect() as conn:
        created = conn.execute(
            text("SELECT count(*) FROM task_events WHERE kind = 'created'")
        ).scalar()
    assert created == count(store, Task)
    store.dispose()


@pytest.mark.mariadb
def test_trueai_on_mariadb_equals_truth(
    tmp_path: Path, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """A non-plus family on MariaDB too: trueai's admin list archived exactly."""
    from sync.archive import schema

    from .helpers import fresh_database

    with fresh_database("mariadb", tmp_path) as url:
        store = Store(url)
        schema.upgrade(store)
        sim = Simulator(700, seed=32, api="trueai", arrivals_per_request=0.5)
        src = family_source(serve(sim).url, "trueai")
        with connect(src) as client:
            pipeline.backfill(store, client, src)
            sim.arrivals_per_request = 0
            pipeline.sweep(store, client, src)
        assert_archive_equals_truth(store, sim)
        store.dispose()


@pytest.mark.parametrize("api", LISTED)
def test_family_sweep_marks_dropped_tasks_gone(
    sqlite_store: Store, api: str, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """Tasks the server dropped are marked gone by a sweep: a sound walk (plus, newapi), the
    whole list (novicezk), or a by-id confirmation of what the walk missed (trueai)."""
    sim = Simulator(600, seed=33, api=api)
    src = family_source(serve(sim).url, api)
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src)
        dropped = {sim.task_id(i) for i in (sim.alive[3], sim.alive[250], sim.alive[-2])}
        for i in [sim.alive[3], sim.alive[250], sim.alive[-2]]:
            sim.remove(i)
        report = pipeline.sweep(sqlite_store, client, src)
    assert report.gone == 3, report.notes
    gone = {tid for tid, row in archive(sqlite_store).items() if row["gone_at"] is not None}
    assert gone == dropped
    assert count(sqlite_store, TaskEvent, kind="gone") == 3


def test_trueai_confirms_gone_by_id_and_saves_what_the_walk_missed(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """trueai's order has ties, so a walk cannot prove a task gone: candidates are asked for
    by id; one the walk missed (but the server has) is saved, not marked gone."""
    sim = Simulator(400, seed=34, api="trueai")
    src = family_source(serve(sim).url, "trueai")
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src)
        sim.remove(sim.alive[100])
        hidden = sim.alive[200]
        sim.on_request = lambda s: None
        # Make the next walk miss one task the server still has (drift the walker can't see).
        real = sim.api.admin_tasks  # type: ignore[attr-defined]

        def hide(s: Simulator, req: Any, query: dict[str, str]) -> Any:
            saved = s.alive
            s.alive = [i for i in saved if i != hidden]
            try:
                return real(s, req, query)
            finally:
                s.alive = saved

        sim.api.admin_tasks = hide  # type: ignore[attr-defined]
        report = pipeline.sweep(sqlite_store, client, src)
    assert report.gone == 1
    row = archive(sqlite_store)[sim.task_id(hidden)]
    assert row["gone_at"] is None
    by_ids = [p for p in sim.paths if p[1] == "/mj/task/list-by-condition"]
    assert by_ids  # the candidates were confirmed


def test_newapi_pages_from_one_never_reads_page_one_twice(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """new-api reads p=0 as 1: the first request asks p=0, learns the counting, goes on with
    p=2, 3, ...; snake_case rows with JSON in strings land in the usual columns."""
    sim = Simulator(450, seed=35, api="newapi", newapi_user=7, token="dash-token")
    src = family_source(serve(sim).url, "newapi", newapi_user=7)
    with connect(src, token="dash-token") as client:
        report = pipeline.backfill(sqlite_store, client, src)
    assert report.outcome == "ok" and report.inserted == 450
    assert sim.page_log == [0, 1, 2, 3, 4]  # 0-based on the server's side: no page twice
    row = archive(sqlite_store)[sim.task_id(100)]
    served = sim.truth()[sim.task_id(100)]
    assert row["json"] == served and isinstance(row["buttons"], list)
    assert row["properties"]["finalPrompt"] == sim.task(100)["properties"]["finalPrompt"]
    assert_archive_equals_truth(sqlite_store, sim)


def test_newapi_old_version_pages_from_zero_without_totals(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """Older new-api: pages from 0, bare arrays, no total, times in seconds: archived right
    (no 1970 dates), and a sweep marks nothing gone because it cannot know, and says so."""
    sim = Simulator(95, seed=36, api="newapi", newapi_old=True)
    src = family_source(serve(sim).url, "newapi")
    with connect(src) as client:
        report = pipeline.backfill(sqlite_store, client, src)
        assert report.inserted == 95
        assert_archive_equals_truth(sqlite_store, sim)
        sim.remove(sim.alive[5])
        swept = pipeline.sweep(sqlite_store, client, src)
    assert swept.gone == 0 and any("nothing marked gone" in n for n in swept.notes)
    row = archive(sqlite_store)[sim.task_id(50)]
    assert row["submit_time"] is not None and row["submit_time"].year == 2026


def test_newapi_incremental_rechecks_an_old_unfinished_task(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """Without list-by-condition, a sync reads on down to the oldest unfinished task due."""
    sim = Simulator(800, seed=37, api="newapi", unfinished_per_mille=0)
    deep = sim.alive[30]  # far down the list
    sim.overrides[deep] = dict(sim.task(deep), status="SUBMITTED", finishTime=None)
    src = family_source(serve(sim).url, "newapi")
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src)
        sim.advance(deep)
        report = pipeline.incremental(sqlite_store, client, src)
    assert report.changed >= 1
    assert archive(sqlite_store)[sim.task_id(deep)]["status"] == "IN_PROGRESS"


def test_newapi_stuck_task_backs_off_so_syncs_stay_shallow(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """A task stuck unfinished far down the list is read down to once, then backs off: the
    next syncs cost what a sync without it costs, until its next check is due."""
    from datetime import timedelta

    from sync.archive.store import RECHECK_FIRST_S

    sim = Simulator(2_000, seed=41, api="newapi", unfinished_per_mille=0)
    deep = sim.alive[10]
    sim.overrides[deep] = dict(sim.task(deep), status="SUBMITTED", finishTime=None)
    src = family_source(serve(sim).url, "newapi")
    now = [datetime(2026, 12, 1, tzinfo=UTC)]
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src, clock=lambda: now[0])
        first = pipeline.incremental(sqlite_store, client, src, clock=lambda: now[0])
        now[0] += timedelta(seconds=5)
        second = pipeline.incremental(sqlite_store, client, src, clock=lambda: now[0])
        now[0] += timedelta(seconds=RECHECK_FIRST_S + 1)
        due_again = pipeline.incremental(sqlite_store, client, src, clock=lambda: now[0])
        now[0] += timedelta(seconds=5)
        sim.advance(deep)  # it moves while backed off: met on the next due pass
        quiet = pipeline.incremental(sqlite_store, client, src, clock=lambda: now[0])
        now[0] += timedelta(seconds=4 * RECHECK_FIRST_S)
        moved = pipeline.incremental(sqlite_store, client, src, clock=lambda: now[0])
    pages = 2_000 // src.page_size
    assert first.requests >= pages and due_again.requests >= pages
    assert second.requests <= 3 and quiet.requests <= 3, (second.requests, quiet.requests)
    assert moved.changed >= 1
    assert archive(sqlite_store)[sim.task_id(deep)]["status"] == "IN_PROGRESS"


def test_newapi_unset_values_and_empty_status(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """ "" and 0 stay in the object as sent and become NULL in typed time columns; a status of ""
    (a relay before its poll) counts as unfinished."""
    sim = Simulator(60, seed=38, api="newapi", unfinished_per_mille=0)
    sim.arrive(1)
    src = family_source(serve(sim).url, "newapi")
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src)
    tid = sim.listing()[0]
    row = archive(sqlite_store)[tid]
    raw = row["json"]
    assert raw["finish_time"] == 0 and row["finish_time"] is None
    assert raw["fail_reason"] == "" and row["fail_reason"] == ""
    assert tid in sqlite_store.unfinished_ids("main")


def test_trueai_cancel_stays_as_the_server_said(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """A trueai cancel is FAILURE with "取消任务": archived as said, not turned into CANCEL."""
    sim = Simulator(300, seed=39, api="trueai")
    cancelled = next(i for i in sim.alive if sim.task(i)["status"] == "CANCEL")
    src = family_source(serve(sim).url, "trueai")
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src)
    row = archive(sqlite_store)[sim.task_id(cancelled)]
    assert (row["status"], row["fail_reason"]) == ("FAILURE", "取消任务")
    assert "displays" in row["json"] and "useTime" in row["json"]  # computed fields kept


def test_trueai_token_is_sent_verbatim(serve: Callable[[Simulator], SimulatorServer]) -> None:
    """trueai compares the token verbatim: no "Bearer", and one header only."""
    sim = Simulator(20, api="trueai", token="raw-token")
    url = serve(sim).url
    for header in ("Authorization", "mj-api-secret"):
        src = family_source(url, "trueai", auth_header=header)
        with connect(src, token="raw-token") as client:
            assert client.query_page(0, 10).ids
    wrong = connect(family_source(url, "trueai"), token="wrong")
    with wrong, pytest.raises(AuthRefused, match="账号不可用"):
        wrong.query_page(0, 10)


def test_trueai_demo_mode_is_detected_and_said(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """Demo mode cuts pages to 10 and refuses past the 10th: a short list is archived with a
    note; a longer one fails with one line saying why (without asking past page 10)."""
    small = Simulator(80, seed=40, api="trueai", trueai_demo=True)
    src = family_source(serve(small).url, "trueai")
    with connect(src) as client:
        report = pipeline.backfill(sqlite_store, client, src)
    assert report.inserted == 80 and any("demo mode" in n for n in report.notes)
    big = Simulator(250, seed=41, api="trueai", trueai_demo=True)
    src = family_source(serve(big).url, "trueai", name="big")
    with connect(src) as client, pytest.raises(ServerRefused, match="demo mode") as info:
        pipeline.backfill(sqlite_store, client, src)
    assert "\n" not in str(info.value) and max(big.page_log) == 9


def test_novicezk_whole_list_bounds_each_task(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """The whole list is read as a stream; a single task object larger than max_response_mb
    fails the read (the list itself may be any size)."""
    sim = Simulator(3_000, seed=42, api="novicezk")
    src = family_source(serve(sim).url, "novicezk", max_response_mb=0.05)
    with connect(src) as client:
        report = pipeline.backfill(sqlite_store, client, src)  # 3,000 tasks, each small
        assert report.inserted == 3_000
        sim.overrides[5] = dict(sim.task(5), prompt="x" * 200_000)
        with pytest.raises(BadResponse, match="one task object is larger"):
            pipeline.sweep(sqlite_store, client, src)


def test_novicezk_empty_body_401_is_a_refused_token(
    serve: Callable[[Simulator], SimulatorServer],
) -> None:
    """novicezk answers a wrong secret with 401 and no body: the token was refused."""
    sim = Simulator(10, api="novicezk", token="right")
    client = connect(family_source(serve(sim).url, "novicezk"), token="wrong")
    with client, pytest.raises(AuthRefused, match="refused the token"):
        list(client.whole_list())


def test_ids_relay_refreshes_the_given_ids(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """A relay with no list: the ids given are fetched with change detection and events; a
    sweep refreshes every archived task and marks nothing gone."""
    sim = Simulator(500, seed=43, api="ids")
    wanted = sim.listing()[:150]
    src = family_source(serve(sim).url, "ids")
    with connect(src) as client:
        first = pipeline.backfill(sqlite_store, client, src, ids=wanted)
        assert first.inserted == 150 and first.requests == 2
        moving = next(
            sim.index_of(t)
            for t in wanted
            if sim.task(sim.index_of(t) or 0)["status"] not in ("SUCCESS", "FAILURE", "CANCEL")
        )
        assert moving is not None
        sim.advance(moving)
        again = pipeline.incremental(sqlite_store, client, src, ids=wanted[:10])
        assert again.changed >= 1
        sim.remove(sim.index_of(wanted[0]) or 0)
        swept = pipeline.sweep(sqlite_store, client, src)
    assert swept.gone == 0 and any("nothing marked gone" in n for n in swept.notes)
    assert set(archive(sqlite_store)) == set(wanted)


def test_ids_relay_reads_ids_from_a_query_and_a_file(
    run: Run, tmp_path: Path, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """`ids_query` over another table in the archive's database, or `--ids-from FILE`."""
    sim = Simulator(300, seed=44, api="ids")
    url = serve(sim).url
    db = f"sqlite:///{tmp_path / 'a.db'}"
    cfg = write_config(
        tmp_path / "c.toml", db, url, api="ids", ids_query="SELECT mj_id FROM orders"
    )
    assert run("--config", str(cfg), "db", "upgrade")[0] == 0
    store = Store(db)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (mj_id TEXT)")
        for tid in sim.listing()[:20]:
            conn.exec_driver_sql("INSERT INTO orders VALUES (?)", (tid,))
    code, _out, err = run("--config", str(cfg), "sync")
    assert code == 0, err
    assert count(store, Task) == 20
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# more\n" + "\n".join(sim.listing()[20:45]) + "\n\n")
    code, _out, err = run("--config", str(cfg), "backfill", "--ids-from", str(ids_file))
    assert code == 0, err
    assert count(store, Task) == 45
    store.dispose()


@pytest.mark.parametrize(
    ("ids_query", "code", "words"),
    [
        ("SELECT mj_id FROM no_such_table", 1, "no such table"),
        ("DELETE FROM tasks", 2, "refused"),
    ],
)
def test_a_bad_ids_query_names_its_source_and_key(
    run: Run, tmp_path: Path, ids_query: str, code: int, words: str
) -> None:
    """A failing or writing `ids_query`: one line that says which source and which key."""
    db = f"sqlite:///{tmp_path / 'a.db'}"
    cfg = write_config(
        tmp_path / "c.toml", db, "http://127.0.0.1:9", api="ids", ids_query=ids_query
    )
    assert run("--config", str(cfg), "db", "upgrade")[0] == 0
    got, _out, err = run("--config", str(cfg), "sync")
    assert got == code, err
    assert "source 'main': ids_query:" in err and words in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("api", LISTED)
def test_auto_detection_finds_each_family_reading_only(
    api: str, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """Probing finds the family each simulator mode plays, and only ever reads."""
    sim = Simulator(30, api=api, token="t0k", newapi_user=3 if api == "newapi" else None)
    src = family_source(serve(sim).url, "auto", newapi_user=3)
    with connect(src, token="t0k") as client:
        found, evidence = detect(client)
    assert found.name == api and evidence
    assert set(sim.paths) <= READS


def test_auto_detection_says_what_else_a_server_is(
    serve: Callable[[Simulator], SimulatorServer],
) -> None:
    """A relay with no list, trueai without an admin token, an unrelated web server, a JSON
    API that is no Midjourney proxy: each gets one plain line."""
    relay = Simulator(10, api="ids")
    client = connect(family_source(serve(relay).url, "auto"))
    with client, pytest.raises(ConfigError, match="has no task list"):
        detect(client)
    assert set(relay.paths) <= READS
    trueai = Simulator(10, api="trueai", trueai_admin=False)
    client = connect(family_source(serve(trueai).url, "auto"))
    with client, pytest.raises(ConfigError, match="admin's token"):
        detect(client)

    def html(*_: Any) -> Any:
        yield 0, http_reply(b"<!doctype html><html>hello</html>", ctype="text/html")

    with HostileServer(html) as web, connect(family_source(web.url, "auto")) as client:
        with pytest.raises(ConfigError, match="web page"):
            detect(client)
        assert {(m, p.split("?")[0]) for m, p, _h, _b in web.requests} <= READS

    def other(*_: Any) -> Any:
        yield 0, http_reply(b'{"error": "no such thing"}', status="404 Not Found")

    with HostileServer(other) as api:
        client = connect(family_source(api.url, "auto"))
        with client, pytest.raises(ConfigError, match="not a Midjourney-proxy server"):
            detect(client)


def test_auto_family_is_remembered_and_probed_again_when_it_stops_fitting(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """The family found is kept in the archive (no probing on later runs); when a reply no
    longer fits it, the run fails, the memory is cleared, and the next run probes again."""
    sim = Simulator(120, seed=45, api="trueai")
    src = family_source(serve(sim).url, "auto")
    with connect(src) as client:
        assert pipeline.backfill(sqlite_store, client, src).api == "trueai"
    assert sources.remembered(sqlite_store, "main") == "trueai"
    before = len(sim.paths)
    with connect(src) as client:
        pipeline.incremental(sqlite_store, client, src)
    assert ("POST", "/mj/task/query") not in list(sim.paths)[before:]  # not probed again
    sim.api = APIS["plus"]()  # the server is replaced by a plus one
    with connect(src) as client, pytest.raises((BadResponse, Exception)):
        pipeline.incremental(sqlite_store, client, src)
    assert sources.remembered(sqlite_store, "main") is None
    with connect(src) as client:
        again = pipeline.incremental(sqlite_store, client, src)
    assert again.api == "plus" and sources.remembered(sqlite_store, "main") == "plus"


def test_config_check_and_the_run_line_name_the_family(
    run: Run, tmp_path: Path, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """`config check` shows what `api = auto` finds; the run line says `api=`."""
    sim = Simulator(50, api="novicezk")
    db = f"sqlite:///{tmp_path / 'a.db'}"
    cfg = write_config(tmp_path / "c.toml", db, serve(sim).url, api="auto")
    code, out, err = run("--config", str(cfg), "config", "check")
    assert code == 0, err
    assert "api = auto finds novicezk" in out
    run("--config", str(cfg), "db", "upgrade")
    code, _out, err = run("--config", str(cfg), "sync")
    assert code == 0 and "api=novicezk" in err, err


def test_named_families_say_what_they_guarantee() -> None:
    """Each family declares its guarantees; the pipeline reads nothing else to decide."""
    expected = {
        "plus": ("walk", True, True),
        "trueai": ("confirm", False, True),
        "novicezk": ("whole", False, True),
        "newapi": ("walk", True, False),
        "ids": ("never", False, True),
    }
    for name, (gone, repair, by_ids) in expected.items():
        family = named(name)
        assert family is not None
        g = family.guarantees
        assert (g.gone, g.drift_repair, g.by_ids) == (gone, repair, by_ids), name


def test_family_names_come_from_one_registry() -> None:
    """The config's `api`, the commands' `--api`, the adapters and the simulator all know
    exactly the families the registry names, in its order."""
    from sync.commands.tools import demo, simulate
    from sync.config import SourceSettings
    from sync.server.families import FAMILIES
    from sync.server.families.adapters import ADAPTERS

    assert tuple(ADAPTERS) == tuple(APIS) == FAMILIES
    for command in (simulate, demo):
        (api,) = [p for p in command.params if p.name == "api"]
        assert tuple(api.type.choices) == FAMILIES  # type: ignore[attr-defined]
    for name in ("auto", *FAMILIES):
        assert SourceSettings(name="a", base_url="http://x", api=name).api == name
    with pytest.raises(ValueError, match="'auto', 'plus', 'trueai', 'novicezk', 'newapi' or 'ids'"):
        SourceSettings(name="a", base_url="http://x", api="nope")
