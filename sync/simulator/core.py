"""The built-in fake server: deterministic, realistic tasks on a loopback port, answering as
any of the server families (`api`: plus by default; sync.simulator.apis has each family's
endpoints, shapes and quirks).

Used by `tasksync demo`, `tasksync simulate`, the tests and the benchmarks. Standard library
plus orjson only, so it starts in milliseconds. Everything that happens (tasks, arrivals,
status progression, expiry, injected faults) follows from the seed and the request count, so a
test can replay it; tests can also mutate it directly between requests (`on_request`).

A second, time-driven live mode (`arrivals_per_s`, `updates_per_s`, `ttl_s`, `stuck_share`)
moves the server with wall-clock time instead, whatever the polling rate, for daemon soak
tests: there only how many changes happen depends on time; which ones still follow the seed.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from sync.simulator.apis import APIS
from sync.simulator.images import ImageFaults, Images
from sync.simulator.server import Reply

ACTIONS = (
    ["IMAGINE"] * 5
    + ["UPSCALE"] * 3
    + ["VARIATION"] * 2
    + [
        "ZOOM",
        "PAN",
        "DESCRIBE",
        "BLEND",
        "SHORTEN",
        "SWAP_FACE",
    ]
)
UNFINISHED = ("NOT_START", "SUBMITTED", "MODAL", "IN_PROGRESS")
TERMINAL = ("SUCCESS", "FAILURE", "CANCEL")
LONG_PROMPT = ("ultra detailed isometric diorama of a floating library, " * 80)[:4000]
PROMPTS = [
    "a cat astronaut floating above Earth, cinematic lighting --ar 16:9",
    "赛博朋克风格的城市夜景，霓虹灯倒映在雨中的街道 --v 6",
    "🐉 a dragon over 富士山 at dawn 🌸✨ --niji 6",
    "portrait of an old sailor, oil painting, Rembrandt style",
    "https://cdn.example.com/ref/8812.png a girl reading under a tree --iw 2",
    "minimalist logo of a fox, flat vector, white background",
    "수채화 풍경, 바닷가 마을 🏖️",
    LONG_PROMPT,
    "product photo of a perfume bottle on wet black stone,\nstudio light\n--style raw",
    "Ελληνικός ναός στο ηλιοβασίλεμα, 8k",
]
FAIL_REASONS = [
    "[Invalid parameter] Unrecognized parameter(s): --foo",
    "Banned prompt detected: 🚫",
    "任务超时",
    "Create task error",
]
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
IMAGE_PATHS = ("/attachments/", "/redirect")
GAP_MS = 7_000


def _h(i: int, salt: int) -> int:
    return ((i + 1) * 2654435761 + salt * 40503 + 12345) & 0xFFFFFFFF


@dataclass
class Faults:
    """Per-request fault probabilities, drawn from the simulator's seeded RNG."""

    rate_limit: float = 0.0  # 429 with Retry-After
    server_error: float = 0.0  # 502 with an HTML body
    truncated: float = 0.0  # 200 with half a JSON body
    slow: float = 0.0  # reply after `slow_s`
    drop: float = 0.0  # close the connection without a reply
    refuse: float = 0.0  # 200 {"success": false}
    html: float = 0.0  # 200 text/html (a proxy's page)
    slow_s: float = 0.2
    retry_after: str = "0"

    @classmethod
    def parse(cls, text: str) -> Faults:
        """'429=0.1,5xx=0.05,truncate=0.02,slow=0.02,drop=0.01,refuse=0.01,html=0.01'."""
        names = {
            "429": "rate_limit",
            "5xx": "server_error",
            "truncate": "truncated",
            "slow": "slow",
            "drop": "drop",
            "refuse": "refuse",
            "html": "html",
        }
        out = cls()
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, val = part.partition("=")
            if key not in names:
                raise ValueError(f"unknown fault {key!r} (known: {', '.join(names)})")
            setattr(out, names[key], float(val))
        return out


class Simulator:
    """An in-memory Midjourney-proxy server whose state is a pure function of seed and
    history; it keeps tasks in the plus shape and serves them as its family does."""

    def __init__(
        self,
        tasks: int = 1000,
        *,
        seed: int = 7,
        token: str | None = None,
        unfinished_per_mille: int = 30,
        arrivals_per_request: float = 0.0,
        updates_per_request: float = 0.0,
        expiries_per_request: float = 0.0,
        faults: Faults | None = None,
        nested: bool = False,
        page_cap: int = 100,
        gap_ms: int = GAP_MS,
        arrivals_per_s: float = 0.0,
        updates_per_s: float = 0.0,
        ttl_s: float | None = None,
        stuck_share: float = 0.0,
        wall: Callable[[], float] = time.monotonic,
        api: str = "plus",
        newapi_user: int | None = None,
        newapi_old: bool = False,
        trueai_demo: bool = False,
        trueai_admin: bool = True,
        images: bool = False,
        image_ttl_s: int = 86_400,
        expired_per_mille: int = 0,
        image_faults: ImageFaults | None = None,
    ) -> None:
        """A server listing `tasks` tasks (indexes 0..tasks-1, oldest first).

        Per request (applied at each valid request, before it is answered):
        `arrivals_per_request`, `updates_per_request`, `expiries_per_request`.

        Per second of wall time (`wall`, time.monotonic unless a test passes a fake), applied
        at the start of each valid request for the time elapsed since the previous one:

        - `arrivals_per_s`: new tasks at the head, spread over the elapsed interval. Their
          submitTime is the simulated clock, which in this mode runs with wall time
          (`clock_ms` at construction + elapsed ms), at least 1 ms per event so that it never
          stands still, and never behind the id of the newest task: an arrival takes the next
          index, or skips indexes up to the clock when arrivals are sparser than one per
          `gap_ms`, so its id's epoch part is at most its submitTime (within `gap_ms` of it
          whenever arrivals are that sparse). Ids stay unique and increasing. With the
          default gap_ms (7 s) ids outrun wall time at any rate above 1/7 per second and
          drag the clock along; choose gap_ms a little under 1000 / arrivals_per_s (say 0.8
          of it) for a clock that keeps wall time and ids that tell the submit time.
        - `stuck_share`: the share of tasks that stay SUBMITTED, never picked by updates, until
          they expire: tasks that vanish unfinished. It applies to every arrival (per request
          ones too) and to the initial tasks (on top of `unfinished_per_mille`), so that the
          number of stuck tasks listed is steady from the start rather than growing for ttl_s.
        - `updates_per_s`: steps (`advance`) of random unfinished, not stuck tasks: the
          initial unfinished ones and the arrivals, until they finish.
        - `ttl_s`: tasks that arrived more than ttl_s seconds of wall time ago are expired
          (dropped from the oldest end, like `expire`). The initial tasks count as arrived
          evenly over the ttl_s before construction, oldest first, so they expire steadily
          (tasks / ttl_s per second) instead of all at once; with tasks = arrivals_per_s *
          ttl_s the listing's size stays about constant from the start.

        Both modes may be combined. With none of the time-driven arguments given the
        simulator behaves exactly as before they existed.

        `images`: finished tasks link to pictures (and some to a grid and a video) that this
        simulator serves, at signed links expiring `image_ttl_s` after its start, or already
        expired for `expired_per_mille` of them, with `image_faults` (sync.simulator.images).
        """
        if min(arrivals_per_s, updates_per_s) < 0 or not 0.0 <= stuck_share <= 1.0:
            raise ValueError("rates must be >= 0 and stuck_share within 0..1")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.api = APIS[api]()  # which family it answers as (sync.simulator.apis)
        self.images = (
            Images(
                self,
                ttl_s=image_ttl_s,
                expired_per_mille=expired_per_mille,
                faults=image_faults,
                seed=seed,
            )
            if images
            else None
        )
        self.newapi_user = newapi_user
        self.newapi_old = newapi_old
        self.trueai_demo = trueai_demo
        self.trueai_admin = trueai_admin
        self.seed = seed
        self.gap_ms = gap_ms
        self.token = token
        self.unfinished_per_mille = unfinished_per_mille
        self.arrivals_per_request = arrivals_per_request
        self.updates_per_request = updates_per_request
        self.expiries_per_request = expiries_per_request
        self.faults = faults or Faults()
        self.nested = nested
        self.page_cap = page_cap
        self.rng = random.Random(seed)
        self.fault_rng = random.Random(seed * 7919 + 1)
        self.alive: list[int] = list(range(tasks))  # ascending index = ascending id
        self.next_index = tasks
        self.overrides: dict[int, dict[str, Any]] = {}
        self.clock_ms = T0_MS + tasks * gap_ms
        self.requests = 0
        self.query_requests = 0
        self.on_request: Callable[[Simulator], None] | None = None
        self.slow_next = 0.0
        self.page_log: list[int] = []  # page numbers asked for, in order (for tests)
        # The latest requests' methods and paths (for tests), bounded for long-running servers.
        self.paths: deque[tuple[str, str]] = deque(maxlen=100_000)
        self.lock = threading.RLock()
        self.expired = 0  # tasks expired so far (either mode)
        # ---- time-driven mode (see the constructor's docstring)
        self.arrivals_per_s = arrivals_per_s
        self.updates_per_s = updates_per_s
        self.ttl_s = ttl_s
        self.stuck_share = stuck_share
        self.timed = bool(arrivals_per_s or updates_per_s or ttl_s is not None)
        self.wall = wall
        self.wall0 = self.last_step = wall()
        self.clock0_ms = self.clock_ms
        self.initial = tasks
        # Its own generator, so that the per-request mode draws exactly what it did before.
        self.time_rng = random.Random(seed * 104_729 + 3)
        self.stuck: set[int] = set()  # listed tasks that never move on their own
        if stuck_share > 0:
            self.stuck = {i for i in range(tasks) if self.time_rng.random() < stuck_share}
        self.arrived_at: dict[int, float] = {}  # wall time of each arrival, when ttl_s is set
        # Unfinished tasks that updates may pick: a list (for seeded random picks) plus
        # positions (for O(1) removal), instead of scanning the whole listing per step (a
        # scan builds every task: ~0.3 s at 20k tasks). Entries a test finished behind the
        # simulator's back are dropped when picked.
        self.pending: list[int] = []
        self.pending_at: dict[int, int] = {}
        if self.timed:
            for i in range(tasks):
                if i not in self.stuck and self._generated_status(i) not in TERMINAL:
                    self._pending_add(i)

    # ---- tasks -----------------------------------------------------------------------------------
    def task_id(self, i: int) -> str:
        """Ids as NZ >= 2.4 and trueai make them: 13-digit epoch ms + 3 digits, in index order."""
        return f"{T0_MS + i * self.gap_ms}{i % 1000:03d}"

    def index_of(self, task_id: str) -> int | None:
        if len(task_id) != 16 or not task_id.isdigit():
            return None
        i, rest = divmod(int(task_id[:13]) - T0_MS, self.gap_ms)
        return i if rest == 0 and i >= 0 and i % 1000 == int(task_id[13:]) else None

    def _generated_status(self, i: int) -> str:
        """The status of task i as generated (before any change), without building it."""
        if i in self.stuck:
            return "SUBMITTED"
        h, h2 = _h(i, self.seed), _h(i, self.seed + 1)
        r = h % 1000
        pm = self.unfinished_per_mille
        return (
            "SUCCESS"
            if r < 880 - pm
            else "FAILURE"
            if r < 950 - pm
            else "CANCEL"
            if r < 1000 - pm
            else UNFINISHED[h2 % 4]
        )

    def _generated(self, i: int) -> dict[str, Any]:
        h, h2 = _h(i, self.seed), _h(i, self.seed + 1)
        status = self._generated_status(i)
        return self._build(i, ACTIONS[h2 % len(ACTIONS)], status, T0_MS + i * self.gap_ms, h)

    def _build(self, i: int, action: str, status: str, submit: int, h: int) -> dict[str, Any]:
        tid = self.task_id(i)
        prompt = PROMPTS[h % len(PROMPTS)]
        start = submit + 400 + h % 30_000
        finish = start + 15_000 + (h >> 8) % 90_000
        task: dict[str, Any] = {
            "id": tid,
            "action": action,
            "status": status,
            "prompt": prompt,
            "promptEn": prompt if h % 3 else None,
            "description": f"/{action.lower()} {prompt[:60]}",
            "state": f"user-{h % 97}" if h % 4 == 0 else None,
            "submitTime": submit,
            "startTime": None,
            "finishTime": None,
            "imageUrl": None,
            "progress": "0%",
            "failReason": None,
            "properties": {
                "finalPrompt": f"{prompt} --v 6.1",
                "nonce": str(10**18 + h * 977),
                "botType": "NIJI_JOURNEY" if h % 5 == 0 else "MID_JOURNEY",
                "discordInstanceId": str(1100 + h % 3),
                "flags": h % 64,
            },
            "buttons": [],
        }
        if status == "NOT_START":
            task["progress"] = ""
        elif status == "IN_PROGRESS":
            task.update(
                startTime=start,
                progress=f"{10 + h % 80}%",
                imageUrl=f"https://cdn.example.com/progress/{tid}.webp",
            )
        elif status == "SUCCESS":
            task.update(
                startTime=start,
                finishTime=finish,
                progress="100%",
                imageUrl=f"https://cdn.example.com/attachments/{tid}/grid_0.png",
            )
            if self.images is not None:
                self.images.add(task, i, h, action)
            if action in ("IMAGINE", "VARIATION", "ZOOM", "PAN"):
                task["buttons"] = [
                    {
                        "customId": f"MJ::JOB::{k}::{n}::{tid}",
                        "emoji": "🔄" if k == "reroll" else "",
                        "label": f"{k[0].upper()}{n}",
                        "type": 2,
                        "style": 2,
                    }
                    for k in ("upsample", "variation")
                    for n in (1, 2, 3, 4)
                ]
            if action == "DESCRIBE":
                task["properties"]["finalPrompt"] = "1️⃣ a cat\n\n2️⃣ 一只猫\n\n3️⃣ a 🐱"
        elif status == "FAILURE":
            task.update(
                startTime=start if h % 2 else None,
                finishTime=finish,
                progress="",
                failReason=FAIL_REASONS[h % len(FAIL_REASONS)],
            )
        elif status == "CANCEL":
            task.update(finishTime=finish, progress="", failReason="canceled by user")
        if h % 11 == 0:
            task["properties"]["extra"] = {"nested": [1, {"deep": True}], "k": None}
        return task

    def task(self, i: int) -> dict[str, Any]:
        return self.overrides.get(i) or self._generated(i)

    def truth(self) -> dict[str, dict[str, Any]]:
        """Every task the server lists now, by id, as its family serves it (for tests)."""
        with self.lock:
            return {self.task_id(i): self.api.serve(self, i) for i in self.alive}

    def newest(self, offset: int, size: int) -> list[int]:
        """The listed tasks at positions offset.. offset+size-1, newest first."""
        total = len(self.alive)
        hi = total - offset
        lo = max(0, hi - size)
        return [self.alive[k] for k in range(hi - 1, lo - 1, -1)] if hi > 0 else []

    def alive_of(self, ids: list[Any]) -> list[int]:
        """The listed tasks among these ids (unknown or dropped ones left out)."""
        out = []
        for tid in ids:
            i = self.index_of(str(tid))
            if i is not None:
                pos = bisect.bisect_left(self.alive, i)
                if pos < len(self.alive) and self.alive[pos] == i:
                    out.append(i)
        return out

    def listing(self) -> list[str]:
        with self.lock:
            return [self.task_id(i) for i in reversed(self.alive)]

    def stats(self) -> dict[str, int]:
        """Counts for a soak test's report: listed now, arrived, expired, requests, and in the
        time-driven mode the unfinished tasks updates may pick and the stuck ones listed."""
        with self.lock:
            return {
                "listed": len(self.alive),
                "arrived": self.next_index - self.initial,
                "expired": self.expired,
                "requests": self.requests,
                "pending": len(self.pending),
                "stuck": len(self.stuck),
                "clock_ms": self.clock_ms,
            }

    # ---- change ----------------------------------------------------------------------------------
    def _tick(self, at: float | None = None) -> int:
        """Move the simulated clock for one event and return it: 1 s per event per request,
        or in the time-driven mode to wall time `at` (default now), at least 1 ms on."""
        if self.timed:
            wall = at if at is not None else self.wall()
            self.clock_ms = max(self.clock_ms + 1, self.clock0_ms + int((wall - self.wall0) * 1000))
        else:
            self.clock_ms += 1000
        return self.clock_ms

    def _arrive_one(self, at: float | None = None) -> str:
        """One new task at the head, submitted now (or at wall time `at` in the timed mode)."""
        now = self._tick(at)
        i = self.next_index
        if self.timed:
            # Skip indexes up to the clock, and never let the clock fall behind the new id.
            i = max(i, (now - T0_MS) // self.gap_ms)
            self.clock_ms = now = max(now, T0_MS + i * self.gap_ms)
        self.next_index = i + 1
        h = _h(i, self.seed)
        stuck = self.stuck_share > 0 and self.time_rng.random() < self.stuck_share
        status = "SUBMITTED" if stuck or h % 9 else "MODAL"
        task = self._build(i, ACTIONS[h % len(ACTIONS)], status, now, h)
        self.overrides[i] = task
        self.alive.append(i)
        if stuck:
            self.stuck.add(i)
        elif self.timed:
            self._pending_add(i)
        if self.ttl_s is not None:
            self.arrived_at[i] = at if at is not None else self.wall()
        return str(task["id"])

    def arrive(self, n: int = 1) -> list[str]:
        """n new tasks at the head of the list, just submitted."""
        with self.lock:
            return [self._arrive_one() for _ in range(n)]

    def unfinished(self) -> list[int]:
        with self.lock:
            return [i for i in self.alive if self.task(i)["status"] not in TERMINAL]

    def advance(self, i: int) -> None:
        """Move one task a step along its life; a finished task gets a late change instead."""
        with self.lock:
            t = dict(self.task(i))
            t["properties"] = dict(t.get("properties") or {})
            now = self._tick()
            h = _h(i, self.seed + now)
            st = t["status"]
            if st in ("NOT_START", "MODAL"):
                t.update(status="SUBMITTED", progress="0%")
            elif st == "SUBMITTED":
                t.update(status="IN_PROGRESS", startTime=now, progress="15%")
            elif st == "IN_PROGRESS":
                pct = int((t.get("progress") or "0%").rstrip("%") or 0)
                if pct < 70:
                    t.update(progress=f"{pct + 30}%")
                elif h % 5 == 0:
                    t.update(
                        status="FAILURE",
                        finishTime=now,
                        progress="",
                        failReason=FAIL_REASONS[h % len(FAIL_REASONS)],
                    )
                else:
                    t.update(
                        status="SUCCESS",
                        finishTime=now,
                        progress="100%",
                        imageUrl=f"https://cdn.example.com/attachments/{t['id']}/final.png",
                    )
                    if self.images is not None:
                        self.images.add(t, i, h, t["action"])
            else:  # finished tasks still change: a storage copy of the image, a seed
                if self.images is None:
                    t["imageUrl"] = f"https://oss.example.com/{t['id']}.png?v={now}"
                t["properties"]["imageSeed"] = str(h)
            self.overrides[i] = t

    def _forget(self, i: int) -> None:
        """Drop what the simulator keeps about a task that left the listing."""
        self.overrides.pop(i, None)
        self.stuck.discard(i)
        self.arrived_at.pop(i, None)
        self._pending_drop(i)

    def remove(self, i: int) -> None:
        with self.lock:
            pos = bisect.bisect_left(self.alive, i)
            if pos < len(self.alive) and self.alive[pos] == i:
                del self.alive[pos]
                self._forget(i)

    def expire(self, n: int = 1) -> None:
        """The n oldest tasks reach the end of their retention."""
        with self.lock:
            gone = self.alive[:n]
            for i in gone:
                self._forget(i)
            del self.alive[:n]
            self.expired += len(gone)

    def _draw(self, rate: float, rng: random.Random | None = None) -> int:
        whole, frac = divmod(rate, 1.0)
        return int(whole) + (1 if (rng or self.rng).random() < frac else 0)

    def _live_step(self) -> None:
        if self.arrivals_per_request:
            self.arrive(self._draw(self.arrivals_per_request))
        if self.updates_per_request:
            pending = self.unfinished()
            if self.stuck:  # stuck tasks never move on their own
                pending = [i for i in pending if i not in self.stuck]
            for _ in range(self._draw(self.updates_per_request)):
                if pending:
                    self.advance(pending[self.rng.randrange(len(pending))])
        if self.expiries_per_request:
            self.expire(self._draw(self.expiries_per_request))

    # ---- time-driven mode ------------------------------------------------------------------------
    def _pending_add(self, i: int) -> None:
        if i not in self.pending_at:
            self.pending_at[i] = len(self.pending)
            self.pending.append(i)

    def _pending_drop(self, i: int) -> None:
        pos = self.pending_at.pop(i, None)
        if pos is not None:  # swap with the last entry: O(1), and still deterministic
            last = self.pending.pop()
            if last != i:
                self.pending[pos] = last
                self.pending_at[last] = pos

    def _arrival_time(self, i: int) -> float:
        """Wall time at which task i arrived (initial tasks: spread over the ttl before us)."""
        at = self.arrived_at.get(i)
        if at is not None:
            return at
        if i < self.initial and self.ttl_s is not None:
            return self.wall0 - (self.initial - i) / self.initial * self.ttl_s
        return self.wall0  # a task a test put in the listing by hand: from construction

    def _time_step(self) -> None:
        """Apply what happened since the last step: arrivals, updates, then expiry."""
        if not self.timed:
            return
        now = self.wall()
        start, elapsed = self.last_step, now - self.last_step
        if elapsed <= 0:
            return
        self.last_step = now
        if self.arrivals_per_s:
            n = self._draw(self.arrivals_per_s * elapsed, self.time_rng)
            for k in range(n):  # spread over the interval, so submit times look like a stream
                self._arrive_one(start + elapsed * (k + 1) / n)
        if self.updates_per_s:
            for _ in range(self._draw(self.updates_per_s * elapsed, self.time_rng)):
                i = self._pick_pending()
                if i is None:
                    break
                self.advance(i)
                if self.task(i)["status"] in TERMINAL:
                    self._pending_drop(i)
        if self.ttl_s is not None:
            cutoff, n = now - self.ttl_s, 0
            while n < len(self.alive) and self._arrival_time(self.alive[n]) <= cutoff:
                n += 1
            if n:
                self.expire(n)

    def _pick_pending(self) -> int | None:
        """A random unfinished task that may move on, or None when there is none."""
        while self.pending:
            i = self.pending[self.time_rng.randrange(len(self.pending))]
            if self.task(i)["status"] not in TERMINAL:
                return i
            self._pending_drop(i)  # a test finished it directly
        return None

    # ---- the API ---------------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        """Answer one request, as the family it plays (shared by the HTTP server and tests'
        MockTransport). `target` is the path with its query string."""
        parts = urlsplit(target)
        path, query = parts.path, dict(parse_qsl(parts.query))
        if self.images is not None and method == "GET" and path.startswith(IMAGE_PATHS):
            return self.images.handle(target, headers)  # the CDN: no API token, no API faults
        with self.lock:
            self.requests += 1
            self.paths.append((method, path))
            fault = self._fault()
            if fault is not None:
                return fault
            if self.token is not None and not self.api.authorized(self, headers):
                return self.api.refused(self, headers)
            route = self.api.route(method, path)
            if route is None:
                return self.api.unknown(path)
            try:
                req = orjson.loads(body or b"{}")
            except orjson.JSONDecodeError:
                return Reply(400, b'{"error":"Bad Request","status":400}')
            if self.on_request is not None:
                self.on_request(self)
            self._time_step()
            self._live_step()
            if route != "by_ids":
                self.query_requests += 1
            reply: Reply = getattr(self.api, route)(self, req, query)
            if route != "by_ids" and self.slow_next:
                reply.delay, self.slow_next = self.slow_next, 0.0
            return reply

    def _fault(self) -> Reply | None:
        """Maybe replace this request's answer with a fault (or make it slow)."""
        f, r = self.faults, self.fault_rng.random()
        options = [
            (f.rate_limit, Reply(429, b"", "text/plain", {"Retry-After": f.retry_after})),
            (f.server_error, Reply(502, b"<html><h1>502 Bad Gateway</h1></html>", "text/html")),
            (f.html, Reply(200, b"<!doctype html><html><title>Dashboard</title>", "text/html")),
            (f.drop, Reply(0, drop=True)),
            (f.refuse, Reply(200, b'{"success":false,"code":500,"message":"busy"}')),
            (f.truncated, Reply(200, b'{"content":[{"id":"1767225600')),
        ]
        for rate, reply in options:
            if r < rate:
                return reply
            r -= rate
        if r < f.slow:
            self.slow_next = f.slow_s
        return None

    def _query(self, req: Any) -> Reply:
        if not isinstance(req, dict):
            return Reply(400, b'{"error":"Bad Request","status":400}')
        number, size = req.get("pageNumber", 0), req.get("pageSize", 10)
        if not isinstance(number, int) or not isinstance(size, int) or number < 0 or size < 1:
            return Reply(
                400,
                b'{"error":"Bad Request","message":"Page index must not be less '
                b'than zero","status":400}',
            )
        size = min(size, self.page_cap)
        self.page_log.append(number)
        total = len(self.alive)
        content = [self.task(i) for i in self.newest(number * size, size)]
        pages = (total + size - 1) // size
        last = number >= pages - 1
        if self.nested:
            doc: dict[str, Any] = {
                "content": content,
                "page": {
                    "size": size,
                    "number": number,
                    "totalElements": total,
                    "totalPages": pages,
                },
            }
        else:
            doc = {
                "content": content,
                "empty": not content,
                "first": number == 0,
                "last": last,
                "number": number,
                "numberOfElements": len(content),
                "size": size,
                "totalElements": total,
                "totalPages": pages,
                "pageable": {
                    "offset": number * size,
                    "pageNumber": number,
                    "pageSize": size,
                    "paged": True,
                    "unpaged": False,
                    "sort": {"empty": False, "sorted": True, "unsorted": False},
                },
                "sort": {"empty": False, "sorted": True, "unsorted": False},
            }
        return Reply(200, orjson.dumps(doc))
