"""The image job against the simulator's CDN over loopback, into real databases and a real
folder: every picture fetched once and stored by content hash, soonest-expiring first, expired
links tried once, kills leaving no partial file, hostile links refused at the socket, the
token never sent to an image host."""

from __future__ import annotations

import hashlib
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpcore
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sync.archive.images import Outcome
from sync.archive.models import TaskImage
from sync.archive.store import Store
from sync.config import ImagesSettings
from sync.images import job as images
from sync.images.client import ImageClient, ImageFailure
from sync.jobs import pipeline
from sync.server.client import connect
from sync.server.transport import AddressRefused, public_only
from sync.simulator import Simulator, SimulatorServer
from sync.simulator.images import ImageFaults, png

from .helpers import (
    HostileServer,
    Run,
    http_reply,
    source_for,
    stop_daemon,
    tasksync,
    toml_value,
    wait_for,
    write_config,
)

TOKEN = "img-canary-7f3e9a"


def settings(tmp_path: Path, **kw: Any) -> ImagesSettings:
    base: dict[str, Any] = {
        "enabled": True,
        "dir": tmp_path / "images",
        "allow_hosts": ["127.0.0.1"],
        "concurrency": 2,
        "max_requests_per_second": 10_000,
        "timeout_s": 5,
    }
    return ImagesSettings(**(base | kw))


def archived(
    store: Store, serve: Callable[[Simulator], SimulatorServer], tasks: int = 300, **kw: Any
) -> tuple[Simulator, str]:
    sim = Simulator(tasks, seed=21, images=True, token=TOKEN, **kw)
    url = serve(sim).url
    src = source_for(url)
    with connect(src, token=TOKEN) as client:
        assert pipeline.backfill(store, client, src).outcome == "ok"
    return sim, url


def images_toml(folder: Path | str) -> str:
    return (
        f"\n[images]\nenabled = true\ndir = {toml_value(folder)}\n"
        'allow_hosts = ["127.0.0.1"]\nstatuses = ["SUCCESS"]\n'
    )


def slots(store: Store) -> list[Any]:
    with Session(store.engine) as session:
        return list(session.scalars(select(TaskImage).order_by(TaskImage.id)))


def test_every_image_is_fetched_once_and_identical_bytes_share_a_file(
    store: Store, serve: Callable[[Simulator], SimulatorServer], tmp_path: Path
) -> None:
    """Each link of each finished task is fetched once; files are named by their SHA-256
    (so the simulator's few distinct pictures are a few files); a second run fetches
    nothing; the API token never reaches the image host."""
    sim, url = archived(store, serve)
    assert sim.images is not None
    conf = settings(tmp_path)
    first = images.run(store, conf, [("main", url)])
    got = slots(store)
    finished = [t for t in sim.truth().values() if t["status"] == "SUCCESS"]
    expected = sum(1 + 2 * len(t.get("imageUrls", [])) + ("videoUrl" in t) for t in finished)
    assert len(got) == expected == first.fetched and first.found == expected
    assert {s.state for s in got} == {"fetched"}
    assert {s.role for s in got} == {"image", "grid", "thumbnail", "video"}
    files = [p for p in conf.dir.rglob("*") if p.is_file() and ".tmp" not in p.parts]
    assert len(files) == len({s.sha256 for s in got}) < len(got) / 5  # shared, not copied
    for s in got:
        data = (conf.dir / s.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s.sha256 and len(data) == s.bytes
        assert s.path == f"{s.sha256[:2]}/{s.sha256}{'.mp4' if s.role == 'video' else '.png'}"
        if s.content_type == "image/png":
            assert (s.width, s.height) in ((32, 32), (8, 8))
    cdn_requests = len(sim.images.requests)
    assert cdn_requests == expected
    again = images.run(store, conf, [("main", url)])
    assert (again.found, again.fetched) == (0, 0) and len(sim.images.requests) == cdn_requests
    for _path, headers in sim.images.requests:
        lowered = {k.lower(): v for k, v in headers.items()}
        assert "authorization" not in lowered and "mj-api-secret" not in lowered
        assert not any(TOKEN in v for v in headers.values())


@pytest.mark.parametrize("api", ["novicezk", "trueai", "newapi"])
def test_every_family_s_pictures_are_fetched(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer], tmp_path: Path, api: str
) -> None:
    """Each family names its links its own way (new-api: `image_url`; trueai: `imageUrls`
    objects with thumbnails); every finished task's main picture is fetched all the same."""
    sim = Simulator(120, seed=8, api=api, images=True, token=TOKEN)
    url = serve(sim).url
    src = source_for(url, api=api)
    with connect(src, token=TOKEN) as client:
        assert pipeline.backfill(sqlite_store, client, src).outcome == "ok"
    run = images.run(sqlite_store, settings(tmp_path), [("main", url)])
    got = slots(sqlite_store)
    finished = {i for i, t in sim.truth().items() if t["status"] == "SUCCESS"}
    assert finished and run.fetched == len(got) and {s.state for s in got} == {"fetched"}
    assert {s.task_id for s in got if s.role == "image"} == finished


def test_soonest_expiring_links_are_fetched_first(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer], tmp_path: Path
) -> None:
    """With a limit, the links that expire soonest are the ones tried."""
    _sim, url = archived(sqlite_store, serve, tasks=200)
    conf = settings(tmp_path, concurrency=1)
    images.discover(sqlite_store, "main", url, conf, images.datetime.now(images.UTC))
    everything = slots(sqlite_store)
    order = sorted(everything, key=lambda s: (s.url_expires_at, -s.submitted_at.timestamp()))
    images.run(sqlite_store, conf, [("main", url)], limit=20)
    fetched = {s.id for s in slots(sqlite_store) if s.state == "fetched"}
    assert fetched == {s.id for s in order[:20]}


def test_links_still_alive_come_before_those_without_expiry_and_expired_ones_last(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer], tmp_path: Path
) -> None:
    """Dead links (expired already) never hold up live ones: live links by expiry, then
    links without one, newest first, then the expired, newest first."""
    _sim, url = archived(sqlite_store, serve, tasks=200)
    now = images.datetime.now(images.UTC)
    images.discover(sqlite_store, "main", url, settings(tmp_path), now)
    ids = [s.id for s in slots(sqlite_store)]
    with sqlite_store.engine.begin() as conn:
        conn.execute(
            update(TaskImage)
            .where(TaskImage.id.in_(ids[:15]))
            .values(url_expires_at=now - timedelta(days=3))
        )
        conn.execute(
            update(TaskImage).where(TaskImage.id.in_(ids[15:30])).values(url_expires_at=None)
        )
    by_id = {s.id: s for s in slots(sqlite_store)}
    due = [by_id[d.id] for d in sqlite_store.images.due(now, len(ids))]
    dead = set(ids[:15])

    def group(s: TaskImage) -> int:
        return 2 if s.id in dead else 1 if s.url_expires_at is None else 0

    groups = [group(s) for s in due]
    assert groups == sorted(groups) and groups.count(2) == 15 and groups.count(1) == 15
    live = [s for s in due if group(s) == 0]
    assert [s.url_expires_at for s in live] == sorted(s.url_expires_at for s in live)
    for group in (1, 2):
        submitted = [s.submitted_at for s, g in zip(due, groups, strict=True) if g == group]
        assert submitted == sorted(submitted, reverse=True)


def test_an_outcome_for_an_old_link_does_not_overwrite_a_new_one(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer], tmp_path: Path
) -> None:
    """Two image runs at once: one tries a slot's old link while the other gives the slot a
    new one; the late outcome is not recorded over the new link, which stays to be fetched."""
    _sim, url = archived(sqlite_store, serve, tasks=40)
    now = images.datetime.now(images.UTC)
    images.discover(sqlite_store, "main", url, settings(tmp_path), now)
    slot = sqlite_store.images.due(now, 1)[0]
    with sqlite_store.engine.begin() as conn:
        conn.execute(update(TaskImage).where(TaskImage.id == slot.id).values(url=slot.url + "&v=2"))
    sqlite_store.images.record([Outcome(slot.id, slot.url, "failed", 1, error="HTTP 403")])
    row = next(s for s in slots(sqlite_store) if s.id == slot.id)
    assert (row.state, row.attempts, row.url) == ("pending", 0, slot.url + "&v=2")


def test_a_damaged_file_is_replaced_by_a_verified_download(tmp_path: Path) -> None:
    """A file `images verify` found damaged is put right by the next download of its bytes."""
    folder = images.Folder(tmp_path / "images")
    folder.ready()
    data = png(8, 8, (9, 9, 9))
    sha = hashlib.sha256(data).hexdigest()

    def download() -> Path:
        temp = folder.temp()
        temp.write_bytes(data)
        return folder.root / folder.keep(temp, sha, ".png")

    final = download()
    final.write_bytes(b"rotten")
    assert download() == final and final.read_bytes() == data
    assert list(folder.tmp.iterdir()) == []


def test_no_download_starts_while_a_task_sync_runs(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer], tmp_path: Path
) -> None:
    """In the daemon the image job yields to the task syncs of the same process: while one
    runs, no download starts (for at most YIELD_MAX_S at a time); then the job goes on."""
    sim, url = archived(sqlite_store, serve, tasks=40)
    assert sim.images is not None
    syncing = threading.Event()
    syncing.set()
    requests_while_syncing: list[int] = []

    def sync_ends() -> None:
        time.sleep(0.6)
        requests_while_syncing.append(len(sim.images.requests))
        syncing.clear()

    ender = threading.Thread(target=sync_ends)
    ender.start()
    run = images.run(sqlite_store, settings(tmp_path), [("main", url)], yield_to=syncing.is_set)
    ender.join()
    assert requests_while_syncing == [0]
    assert run.fetched == len(slots(sqlite_store)) > 0


def test_an_expired_link_is_tried_once_and_recorded_as_expired(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer], tmp_path: Path
) -> None:
    sim, url = archived(sqlite_store, serve, tasks=100, expired_per_mille=1000)
    assert sim.images is not None
    conf = settings(tmp_path)
    run = images.run(sqlite_store, conf, [("main", url)])
    got = slots(sqlite_store)
    assert run.expired == len(got) > 0 and {s.state for s in got} == {"expired"}
    assert all(s.last_error == "link expired: HTTP 404" and s.attempts == 1 for s in got)
    tried = len(sim.images.requests)
    with sqlite_store.engine.begin() as conn:  # even when its backoff would long be over
        conn.execute(update(TaskImage).values(next_try_at=None))
    images.run(sqlite_store, conf, [("main", url)])
    assert len(sim.images.requests) == tried


@pytest.mark.parametrize(
    ("fault", "state", "error"),
    [
        pytest.param(ImageFaults(rate_limit=1), "pending", "HTTP 429", id="429-later"),
        pytest.param(ImageFaults(server_error=1), "pending", "HTTP 500", id="500-later"),
        pytest.param(ImageFaults(truncated=1), "pending", "truncated: ", id="cut-short-later"),
        pytest.param(
            ImageFaults(wrong_type=1),
            "failed",
            "not an image or video: declared text/html",
            id="html-never",
        ),
    ],
)
def test_host_faults_are_retried_with_backoff_or_given_up(
    sqlite_store: Store,
    serve: Callable[[Simulator], SimulatorServer],
    tmp_path: Path,
    fault: ImageFaults,
    state: str,
    error: str,
) -> None:
    """A busy or broken host is asked again after a backoff; a reply that is not a picture
    is given up at once; no partial file is left either way; when the host recovers, the
    retries complete."""
    sim, url = archived(sqlite_store, serve, tasks=40, image_faults=fault)
    assert sim.images is not None
    conf = settings(tmp_path, max_attempts=3)
    images.run(sqlite_store, conf, [("main", url)])
    got = slots(sqlite_store)
    assert {s.state for s in got} == {state}
    assert all(s.last_error.startswith(error) for s in got), got[0].last_error
    assert list(conf.dir.rglob("*.p*")) == []  # no .png and no .part
    if state == "pending":
        assert all(s.next_try_at is not None for s in got)
        sim.images.faults = ImageFaults()
        with sqlite_store.engine.begin() as conn:
            conn.execute(update(TaskImage).values(next_try_at=None))
        images.run(sqlite_store, conf, [("main", url)])
        assert {s.state for s in slots(sqlite_store)} == {"fetched"}


def test_hostile_links_are_refused_at_the_socket(
    sqlite_store: Store, serve: Callable[[Simulator], SimulatorServer], tmp_path: Path
) -> None:
    """Private, link-local and loopback addresses (also by name, also after a redirect),
    other schemes and credentials in links are refused and recorded, never fetched."""
    sim = Simulator(30, seed=2, images=True)
    server = serve(sim)
    port = server.url.rsplit(":", 1)[1]
    hostile = {
        "http://10.1.2.3/a.png": "refused: 10.1.2.3 is 10.1.2.3, not a public address",
        f"http://localhost:{port}/attachments/x.png": "refused: localhost is 127.0.0.1",
        f"{server.url}/redirect?to=http://169.254.169.254/latest/meta-data": (
            "refused: 169.254.169.254 is 169.254.169.254"
        ),
        f"{server.url}/redirect?to=http://[::1]:{port}/a.png": "refused: ::1 is ::1",
        "file:///etc/passwd": "not an http(s) link (file scheme)",
        f"http://user:pw@127.0.0.1:{port}/a.png": "a link with credentials in it",
        "http://xn--/b.png": "not a valid link",
        f"{server.url}/redirect?to=http://xn--/c.png": "not a valid link",
    }
    finished = [i for i in sim.alive if sim.task(i)["status"] == "SUCCESS"]
    for i, link in zip(finished, hostile, strict=False):
        sim.overrides[i] = {
            k: v for k, v in sim.task(i).items() if k not in ("imageUrls", "videoUrl")
        }
        sim.overrides[i]["imageUrl"] = link
    src = source_for(server.url)
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src)
    images.run(sqlite_store, settings(tmp_path), [("main", server.url)])
    by_url = {s.url: s for s in slots(sqlite_store)}
    for link, why in hostile.items():
        assert by_url[link].state == "failed", link
        assert by_url[link].last_error.startswith(why), by_url[link].last_error
    others = [s for s in by_url.values() if s.url not in hostile]
    assert others and {s.state for s in others} == {"fetched"}  # one bad link stops no other
    redirects = [p for p, _h in sim.images.requests if p.startswith("/redirect")]
    assert len(redirects) == 3  # the first hops were ours; the hops they named were not
    assert list((tmp_path / "images" / ".tmp").glob("*.part")) == []


def test_dns_answers_are_checked_as_a_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with one public and one private address is refused (rebinding by several
    answers), as is an IPv6 address that carries a private IPv4 one; the address checked is
    the one connected to; slow answers for some names hold up no other name's lookup."""
    policy = public_only()
    real = socket.getaddrinfo
    answers = {
        "mixed.test": ["93.184.216.34", "10.0.0.7"],
        "public.test": ["93.184.216.34"],
        "compat.test": ["::7f00:1"],  # IPv4-compatible 127.0.0.1
        "6to4.test": ["2002:a00:1::1"],  # 6to4 of 10.0.0.1
        "nat64.test": ["64:ff9b::a9fe:a9fe"],  # NAT64 of 169.254.169.254
        "mapped.test": ["::ffff:192.168.1.1"],
    }

    def fake(host: str, port: int, **kw: Any) -> Any:
        if host == "slow.test":
            time.sleep(3)
        if host in answers:
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, port),
                )
                for a in answers[host]
            ]
        return real(host, port, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(AddressRefused, match=r"mixed\.test is 10\.0\.0\.7"):
        policy("mixed.test", 80, 1.0)
    for name, inner in [
        ("compat.test", "127.0.0.1"),
        ("6to4.test", "10.0.0.1"),
        ("nat64.test", "169.254.169.254"),
        ("mapped.test", "192.168.1.1"),
    ]:
        with pytest.raises(AddressRefused, match=rf"{name} is {inner}, not a public"):
            policy(name, 80, 1.0)
    timed_out: list[bool] = []

    def wait_for_slow() -> None:
        try:
            policy("slow.test", 80, 0.3)
        except httpcore.ConnectTimeout:
            timed_out.append(True)

    slow = [threading.Thread(target=wait_for_slow) for _ in range(8)]
    for t in slow:
        t.start()
    time.sleep(0.1)  # eight lookups of slow.test under way
    started = time.monotonic()
    assert policy("public.test", 443, 1.0) == "93.184.216.34"
    assert time.monotonic() - started < 0.5
    for t in slow:
        t.join()
    assert timed_out == [True] * 8


def test_a_kill_mid_download_leaves_no_partial_file_and_a_rerun_completes(
    tmp_path: Path, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """`kill -9` while a file is half received: no file under its final name, the partial
    download is cleared by the next run, which fetches the file."""
    # A PNG with 256 KiB of noise after its end: larger than any write buffer, so half of it
    # is on disk when the download stalls.
    picture = png(64, 64, (1, 2, 3)) + random.Random(5).randbytes(256 * 1024)
    stall = {"on": True}

    def respond(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        head = http_reply(picture, ctype="image/png")
        cut = len(head) - len(picture) // 2
        yield 0, head[:cut]
        while stall["on"]:
            yield 0.2, b""
        yield 0, head[cut:]

    with HostileServer(respond) as cdn:
        sim = Simulator(5, seed=3)
        first = next(i for i in sim.alive if sim.task(i)["status"] == "SUCCESS")
        for i in sim.alive:  # one link, to the stalling CDN: no other download runs alongside
            url = f"{cdn.url}/big.png" if i == first else None
            sim.overrides[i] = dict(sim.task(i), imageUrl=url)
        server = serve(sim)
        db = tmp_path / "a.db"
        cfg = write_config(
            tmp_path / "t.toml",
            f"sqlite:///{db}",
            server.url,
            extra=images_toml(tmp_path / "images"),
        )
        for args in (("db", "upgrade"), ("backfill",)):
            done = tasksync("--config", str(cfg), *args, cwd=tmp_path)
            assert done.wait(60) == 0, done.stderr.read() if done.stderr else ""
        proc = tasksync("--config", str(cfg), "images", "fetch", cwd=tmp_path)
        tmp = tmp_path / "images" / ".tmp"
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size for p in tmp.glob("*.part")) if tmp.exists() else True:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finals = [p for p in (tmp_path / "images").rglob("*.png")]
        assert finals == [] and len(list(tmp.glob("*.part"))) == 1
        stall["on"] = False
        again = tasksync("--config", str(cfg), "images", "fetch", cwd=tmp_path)
        _out, err = again.communicate(timeout=60)
        assert again.returncode == 0, err
        assert list(tmp.glob("*.part")) == []
        sha = hashlib.sha256(picture).hexdigest()
        assert (tmp_path / "images" / sha[:2] / f"{sha}.png").read_bytes() == picture


def test_verify_finds_missing_and_corrupted_files_and_status_counts(
    run: Run, tmp_path: Path, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    sim = Simulator(60, seed=4, images=True, expired_per_mille=300)
    server = serve(sim)
    cfg = write_config(
        tmp_path / "t.toml",
        f"sqlite:///{tmp_path}/a.db",
        server.url,
        extra=images_toml("pics"),
    )
    for args in (("db", "upgrade"), ("backfill",), ("images", "fetch")):
        code, out, err = run("--config", str(cfg), *args)
        assert code == 0, err
    assert out.startswith("images: ") and " fetched " in out
    code, out, err = run("--config", str(cfg), "images", "verify")
    assert code == 0 and " missing, 0 corrupted" in out and out.split()[0] != "0"
    files = sorted(p for p in (tmp_path / "pics").rglob("*.*") if ".tmp" not in p.parts)
    files[0].unlink()
    files[1].write_bytes(b"not what it was")
    files[2].unlink()
    files[2].mkdir()  # a folder where the file was: missing too, not an internal error
    code, out, _ = run("--config", str(cfg), "images", "verify")
    assert code == 1
    assert f"missing:   {files[0].relative_to(tmp_path / 'pics')}" in out
    assert f"corrupted: {files[1].relative_to(tmp_path / 'pics')}" in out
    assert f"missing:   {files[2].relative_to(tmp_path / 'pics')}" in out
    code, out, _ = run("--config", str(cfg), "status", "--no-server")
    line = next(x for x in out.splitlines() if x.strip().startswith("images"))
    assert " fetched (" in line and " expired" in line and "0 pending" in line
    code, out, _ = run("--config", str(cfg), "report")
    assert code == 0 and "images (all time): " in out and " expired" in out


def test_image_client_caps_size_and_redirects(tmp_path: Path) -> None:
    """More bytes than max_mb, or more redirects than max_redirects, is given up."""
    big = png(8, 8, (0, 0, 0)) + b"\0" * 3_000_000

    def respond(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if path.startswith("/loop"):
            n = int(path.rsplit("/", 1)[1])
            yield 0, http_reply(b"", status="302 Found", location=f"/loop/{n + 1}")
        elif path == "/told.png":  # the length said up front
            yield 0, http_reply(big, ctype="image/png")
        else:  # no length: the cap is met while reading
            yield 0, b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n" + big

    with HostileServer(respond) as cdn:
        client = ImageClient(settings(tmp_path, max_mb=1, max_redirects=3))
        sink = open(tmp_path / "x", "wb")  # noqa: SIM115
        with pytest.raises(ImageFailure, match="bytes announced, over max_mb"):
            client.download(f"{cdn.url}/told.png", sink)
        with pytest.raises(ImageFailure, match="more than 1048576 bytes, over max_mb"):
            client.download(f"{cdn.url}/big.png", sink)
        with pytest.raises(ImageFailure, match="more than 3 redirects"):
            client.download(f"{cdn.url}/loop/0", sink)
        sink.close()
        client.close()


@pytest.mark.parametrize(
    ("obj", "links"),
    [
        pytest.param(
            {
                "imageUrl": "https://cdn.test/a.png",
                "imageUrls": [
                    {"url": "https://cdn.test/p0.png", "thumbnail": "https://cdn.test/t0.png"}
                ],
                "thumbnailUrl": "https://cdn.test/t.png",
                "videoUrl": "https://cdn.test/v.mp4",
                "videoUrls": [
                    {"url": "https://cdn.test/v.mp4", "thumbnail": "https://cdn.test/vt.png"}
                ],
            },
            [
                ("image", "https://cdn.test/a.png"),
                ("grid", "https://cdn.test/p0.png"),
                ("thumbnail", "https://cdn.test/t.png"),
                ("thumbnail", "https://cdn.test/t0.png"),
                ("video", "https://cdn.test/v.mp4"),
                ("thumbnail", "https://cdn.test/vt.png"),
            ],
            id="trueai-all-roles-deduplicated",
        ),
        pytest.param(
            {
                "image_url": "/mj/image/17?rand=3",
                "video_url": "",
                "video_urls": '[{"url":"https://v.test/1.mp4"}]',
            },
            [("image", "https://relay.test/mj/image/17?rand=3"), ("video", "https://v.test/1.mp4")],
            id="newapi-relative-and-json-in-string",
        ),
        pytest.param(
            {"imageUrl": None, "imageUrls": "junk", "videoUrls": [3, None]}, [], id="junk"
        ),
    ],
)
def test_links_of_a_task(obj: dict[str, Any], links: list[tuple[str, str]]) -> None:
    roles = ("image", "grid", "video", "thumbnail")
    assert images.links_of(obj, "https://relay.test/", roles) == links


def test_expiry_sniffing_and_dimensions() -> None:
    assert images.expiry("https://cdn.test/a.png?ex=6929f3c0&is=1&hm=2") == (
        images.datetime(2025, 11, 28, 19, 10, 56, tzinfo=images.UTC)
    )
    assert images.expiry("https://cdn.test/a.png?ex=zz") is None
    assert images.expiry("https://cdn.test/a.png") is None
    gif = b"GIF89a" + (300).to_bytes(2, "little") + (200).to_bytes(2, "little")
    jpeg = (
        b"\xff\xd8\xff\xe0\x00\x04xx\xff\xc0\x00\x11\x08"
        + (480).to_bytes(2, "big")
        + (640).to_bytes(2, "big")
    )
    webp = (
        b"RIFF\0\0\0\0WEBPVP8X"
        + b"\0" * 8
        + (99).to_bytes(3, "little")
        + (49).to_bytes(3, "little")
    )
    for head, mime, size in [
        (png(5, 7, (0, 0, 0)), "image/png", (5, 7)),
        (gif, "image/gif", (300, 200)),
        (jpeg, "image/jpeg", (640, 480)),
        (webp, "image/webp", (100, 50)),
    ]:
        assert images.sniff(head) == (
            mime,
            images.SIGNATURES[[s[1] for s in images.SIGNATURES].index(mime)][2],
        )
        assert images.dimensions(head, mime) == size
    assert images.sniff(b"<!doctype html>") is None


def test_the_daemon_runs_the_image_job_on_its_own_schedule(
    tmp_path: Path, serve: Callable[[Simulator], SimulatorServer]
) -> None:
    """`tasksync run` with images on: syncs archive the tasks, the image job fetches their
    pictures on its own interval; SIGTERM still exits 0."""
    sim = Simulator(80, seed=9, images=True)
    server = serve(sim)
    db = f"sqlite:///{tmp_path}/a.db"
    cfg = write_config(
        tmp_path / "d.toml",
        db,
        server.url,
        schedule={"every": "1s", "sweep_every": "1h", "images_every": "1s"},
        extra=images_toml(tmp_path / "images"),
    )
    assert tasksync("--config", str(cfg), "db", "upgrade", cwd=tmp_path).wait(60) == 0
    proc = tasksync("--config", str(cfg), "run", cwd=tmp_path, log=tmp_path / "d.log")
    store = Store(db)
    wanted = sum(1 for t in sim.truth().values() if t["status"] == "SUCCESS")
    wait_for(
        lambda: store.images.counts("main")["fetched"] >= wanted,
        60,
        "the pictures of every finished task",
    )
    assert stop_daemon(proc) < 10
    log = (tmp_path / "d.log").read_text()
    assert "images: " in log and "Traceback" not in log
    store.dispose()
