"""The deployment kit (sync/deploy/) checked by the real tools: promtool runs the alert rules'
unit tests, systemd-analyze verifies the printed unit, and podman builds the image and starts
compose.yaml (tasksync + PostgreSQL) — see test_container_*. Each check is also shown to fail
on a broken input, so a green run means something.

A tool that is not installed skips its tests with the reason; under CI=true (where .ci/run
installs them) a missing tool fails instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # no stubs installed; only safe_load is used

from sync.jobs.metrics import Metrics

from .helpers import CI, ROOT, Run

DEPLOY = ROOT / "sync" / "deploy"

# Metrics another part of tasksync adds (the heartbeat, the scheduler, lag and images): a
# contract, by these exact names, that alerts.yml is written against.
CONTRACT_METRICS = {
    "tasksync_heartbeat_timestamp_seconds",
    "tasksync_next_run_timestamp_seconds",
    "tasksync_lag_seconds",
    "tasksync_images",
    "tasksync_image_bytes",
    "tasksync_image_fetches_total",
}


def need(tool: str) -> str:
    """The tool's path; skip (or, under CI, fail) when it is not installed."""
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (.ci/run installs it from Debian)"
        if CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def kit(tmp_path: Path) -> Path:
    """A copy of the kit's alert files to break."""
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(DEPLOY / name, tmp_path / name)
    return tmp_path


# Alert rules -----------------------------------------------------------------------------


def test_alerts_pass_promtool_check_and_unit_tests() -> None:
    """`promtool check rules` accepts alerts.yml and `promtool test rules` passes."""
    check = promtool("check", "rules", "alerts.yml", cwd=DEPLOY)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 11 rules found" in check.stdout
    test = promtool("test", "rules", "alerts_test.yml", cwd=DEPLOY)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_alerts_a_broken_rule_fails_promtool_check(tmp_path: Path) -> None:
    """A rule that is not valid PromQL makes `promtool check rules` fail: the check can fail."""
    d = kit(tmp_path)
    text = (d / "alerts.yml").read_text()
    (d / "alerts.yml").write_text(text.replace("expr: up{job=", "expr: up{{job=", 1))
    check = promtool("check", "rules", "alerts.yml", cwd=d)
    assert check.returncode == 1
    assert "alerts.yml" in check.stdout + check.stderr


def test_alerts_a_wrong_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """Moving a threshold (30 → 60 minutes without a sync) fails that alert's unit test."""
    d = kit(tmp_path)
    text = (d / "alerts.yml").read_text()
    assert text.count("> 30 * 60") == 1
    (d / "alerts.yml").write_text(text.replace("> 30 * 60", "> 60 * 60"))
    test = promtool("test", "rules", "alerts_test.yml", cwd=d)
    assert test.returncode == 1
    assert "alertname: TasksyncNoRecentSync, time: 46m" in test.stdout + test.stderr


def _exported_metrics() -> set[str]:
    out: set[str] = set()
    for family in Metrics().registry.collect():
        out.add(family.name + ("_total" if family.type == "counter" else ""))
    return out


def test_alerts_name_only_metrics_tasksync_exports_or_the_contract_lists() -> None:
    """Every tasksync_* name in alerts.yml is exported by sync/metrics.py or is one of the
    metrics agreed for the heartbeat, lag and images (a typo would silence an alert)."""
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    used = set(re.findall(r"\btasksync_[a-z_]+", exprs))
    unknown = used - _exported_metrics() - CONTRACT_METRICS
    assert unknown == set()
    assert {"tasksync_runs_total", "tasksync_last_success_timestamp_seconds"} <= used
    assert used >= CONTRACT_METRICS - {"tasksync_images", "tasksync_image_bytes"}


def test_deploy_kit_files_ship_in_the_package() -> None:
    """The kit is package data: readable through importlib.resources, as installed."""
    kit_files = files("sync.deploy")
    for name in ("tasksync.service", "Dockerfile", "compose.yaml", "alerts.yml", "alerts_test.yml"):
        assert kit_files.joinpath(name).read_text(encoding="utf-8").strip(), name


# The systemd unit -----------------------------------------------------------------------


def verify_unit(path: Path) -> str:
    """`systemd-analyze verify` on a unit file: its complaints ('' when there are none).
    It exits 0 on unknown keys and bad values (it only warns), so any output is a failure.
    It reads the unit offline and needs no running systemd (PID 1 is not systemd here)."""
    proc = subprocess.run(
        [need("systemd-analyze"), "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else " (exit 1)")


def test_deploy_systemd_unit_passes_systemd_analyze_verify(run: Run, tmp_path: Path) -> None:
    """The printed unit, with this install's tasksync, verifies without a single warning."""
    code, out, err = run("deploy", "systemd")
    assert (code, err) == (0, "")
    unit = tmp_path / "tasksync.service"
    unit.write_text(out)
    assert verify_unit(unit) == ""


def test_deploy_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """systemd-analyze, as the test runs it, does fail: a misspelt key, a bad value, a
    missing program (the shipped default path /opt/tasksync is not installed here)."""
    text = (DEPLOY / "tasksync.service").read_text()
    unit = tmp_path / "tasksync.service"
    unit.write_text(text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    assert "Unknown key 'NoNewPrivilege'" in verify_unit(unit)
    unit.write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    assert "Failed to parse service restart specifier" in verify_unit(unit)
    unit.write_text(text)
    assert "/opt/tasksync/bin/tasksync is not executable" in verify_unit(unit)


def test_deploy_systemd_fills_in_the_install(run: Run, tmp_path: Path) -> None:
    """--user/--config/--workdir/--exec land in their keys; the config's images folder and
    SQLite folder outside the working folder become writable; secrets stay out of the unit."""
    images, archive = tmp_path / "pics", tmp_path / "db"
    config = tmp_path / "tasksync.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{archive}/a.db"\n'
        f'[images]\nenabled = true\ndir = "{images}"\n'
    )
    code, out, err = run(
        "deploy",
        "systemd",
        "--user",
        "mjarchive",
        "--config",
        str(config),
        "--workdir",
        "/srv/tasksync",
        "--exec",
        "/usr/local/bin/tasksync",
    )
    assert (code, err) == (0, "")
    keys = dict(
        line.split("=", 1) for line in out.splitlines() if "=" in line and line[:1].isupper()
    )
    assert keys["User"] == keys["Group"] == "mjarchive"
    assert keys["WorkingDirectory"] == "/srv/tasksync"
    assert keys["Environment"] == f"TASKSYNC_CONFIG={config}"
    assert keys["EnvironmentFile"] == f"{tmp_path}/tasksync.env"
    assert keys["ExecStartPre"] == "/usr/local/bin/tasksync db upgrade"
    assert keys["ExecStart"] == "/usr/local/bin/tasksync --log-format json run"
    assert keys["ReadWritePaths"] == f"/srv/tasksync {images} {archive}"
    assert keys["ProtectSystem"] == "strict"
    assert keys["KillSignal"] == "SIGTERM"
    assert keys["TimeoutStopSec"] == "45s"  # above the default shutdown_timeout_s of 30 s


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "root; rm"], "--user 'root; rm': a user name such as tasksync"),
        (["--workdir", "srv"], "--workdir 'srv': an absolute path is needed"),
        (
            ["--config", "/etc/x\nExecStartPost=/bin/sh"],
            "--config '/etc/x\\nExecStartPost=/bin/sh': spaces and control characters are not "
            "supported",
        ),
    ],
    ids=["user", "relative-workdir", "newline-injection"],
)
def test_deploy_systemd_refuses_values_a_unit_cannot_hold(
    run: Run, args: list[str], message: str
) -> None:
    """A value that would break (or add lines to) the unit is exit 2 with one line."""
    code, out, err = run("deploy", "systemd", "--exec", "/usr/bin/tasksync", *args)
    assert (code, out, err) == (2, "", f"tasksync: error: {message}\n")


# The container: image, compose file, healthcheck ----------------------------------------

CONTAINERS = Path(os.environ.get("TASKSYNC_TEST_CONTAINERS", "/var/tmp/tasksync-test-containers"))
MIRROR = os.environ.get("TASKSYNC_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE = "localhost/tasksync-test-base:bookworm"  # debootstrap'd here: no registry is reachable
POSTGRES = "localhost/tasksync-test-postgres:15"  # tests/container/: a stand-in, see there
TEST_FILES = ROOT / "tests" / "container"


class Podman:
    """podman and podman-compose on a storage of their own (CONTAINERS), apart from any other
    images on the machine, which also keeps the base image and build layers between runs.

    Two settings this machine needs, harmless elsewhere: runc rather than crun (crun 1.8
    refuses a host with cgroup v1 and v2 mounted side by side: "cgroups in hybrid mode not
    supported"), and rlimits at or below the host's hard limits (podman's rootful defaults
    exceed them, and raising a limit needs CAP_SYS_RESOURCE, which this root lacks)."""

    def __init__(self) -> None:
        self.podman, self.compose = need("podman"), need("podman-compose")
        conf = CONTAINERS / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        # Runtime state on /run (a tmpfs, emptied by a reboot), one folder per storage, and
        # file locks in it: podman's default shared-memory lock table is one per machine, and
        # two storages numbering their locks in it collide.
        run = f"/run/tasksync-test-containers-{zlib.crc32(bytes(CONTAINERS)):08x}"
        (conf / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{CONTAINERS}/storage"\n'
            f'runroot = "{run}/storage"\n'
        )
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
        runtime = 'runtime = "runc"\n' if shutil.which("runc") else ""
        (conf / "containers.conf").write_text(
            f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc=4096:4096"]\n'
            f'[engine]\ntmp_dir = "{run}/libpod"\nlock_type = "file"\n{runtime}'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
            "CONTAINERS_CONF": str(conf / "containers.conf"),
        }

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.podman, *args],
            env=kw.pop("env", self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"podman {' '.join(args[:3])} ... exit {proc.returncode}:\n{proc.stderr[-3000:]}"
            )
        return proc

    def base_image(self, tmp: Path) -> None:
        """Debian bookworm (minbase) from the apt mirror, imported once: what FROM
        debian:bookworm-slim would be with a registry."""
        if self("image", "exists", BASE, check=False).returncode == 0:
            return
        rootfs = tmp / "rootfs"
        subprocess.run(
            [need("debootstrap"), "--variant=minbase", "bookworm", str(rootfs), MIRROR],
            check=True,
            capture_output=True,
            timeout=900,
        )
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            self("import", "-", BASE, stdin=tar.stdout)
        assert tar.returncode == 0
        shutil.rmtree(rootfs)


def build_context(tmp: Path) -> Path:
    """The checkout's installable part, plus a wheelhouse of tasksync and its dependencies for
    Debian's Python 3.11, so that pip in the build needs no index (nor this machine's CA)."""
    ctx = tmp / "context"
    ctx.mkdir()
    for name in ("sync", "migrations"):
        shutil.copytree(ROOT / name, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy(ROOT / name, ctx / name)
    wheels = ctx / "wheelhouse"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(ctx)], check=True, timeout=600
    )
    (wheel,) = wheels.glob("tasksync-*.whl")
    platforms = [
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux_2_28_x86_64",
        "manylinux_2_34_x86_64",
    ]
    subprocess.run(
        [
            *pip,
            "download",
            "-d",
            str(wheels),
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            *(f"--platform={p}" for p in platforms),
            str(wheel),
            "setuptools>=77",
        ],
        check=True,
        timeout=600,
    )
    return ctx


def sources_digest() -> str:
    """A digest of what goes into the image: the tag says which sources it was built from."""
    h = hashlib.sha256()
    paths = [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / ".dockerignore"]
    for folder in ("sync", "migrations"):
        paths += sorted(p for p in (ROOT / folder).rglob("*") if "__pycache__" not in p.parts)
    paths += sorted(TEST_FILES.iterdir())
    for path in paths:
        if path.is_file():
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class Images:
    podman: Podman
    tasksync: str
    postgres: str
    systemd: str


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """The images, built once per sources digest: each test worker that needs them takes a
    lock, and finds them built by another or builds them (base image from debootstrap on the
    first run: about 50 s; the image itself about 1 min)."""
    podman = Podman()
    tag = sources_digest()
    built = Images(
        podman,
        f"localhost/tasksync:test-{tag}",
        POSTGRES,
        f"localhost/tasksync-systemd:test-{tag}",
    )
    with (CONTAINERS / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = (built.tasksync, built.postgres, built.systemd)
        if any(podman("image", "exists", i, check=False).returncode for i in wanted):
            tmp = tmp_path_factory.mktemp("images")
            podman.base_image(tmp)
            # --network host: the builds' apt-get reaches the Debian mirror as this machine does.
            build = ["build", "--format", "docker", "--network", "host"]
            build += ["--build-arg", f"BASE={BASE}"]
            podman(
                *build,
                "--build-arg",
                "PIP_OPTIONS=--no-index --find-links /src/wheelhouse",
                "-t",
                built.tasksync,
                "-f",
                "sync/deploy/Dockerfile",
                str(build_context(tmp)),
            )
            podman(*build, "-t", built.postgres, "-f", "postgres.Dockerfile", str(TEST_FILES))
            podman(
                *build,
                "--build-arg",
                f"IMAGE={built.tasksync}",
                "-t",
                built.systemd,
                "-f",
                "systemd.Dockerfile",
                str(TEST_FILES),
            )
            stale = podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
            for old in stale:
                if re.match(r"localhost/tasksync(-systemd)?:test-", old) and tag not in old:
                    podman("rmi", "-f", old, check=False)
            podman("image", "prune", "-f", check=False)
    yield built


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_container_image_and_compose_run_tasksync_with_postgresql(
    images: Images, tmp_path: Path
) -> None:
    """The image (sync/deploy/Dockerfile, built on a Debian base) and compose.yaml as shipped
    (tasksync + PostgreSQL, secrets from the environment): the healthcheck passes, the
    metrics answer on the published port, the daemon archives a simulator (run inside its
    container) into PostgreSQL and its pictures into the images volume, no secret is in the
    image or the logs, and SIGTERM stops it with exit 0."""
    podman, image = images.podman, images.tasksync

    project = f"tsdeploy{os.getpid()}"
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy(DEPLOY / "compose.yaml", work / "compose.yaml")
    (work / "tasksync.toml").write_text(
        '[[sources]]\nname = "sim"\nbase_url = "http://127.0.0.1:8080"\n'
        'token_env = "TASKSYNC_TOKEN"\nmax_requests_per_second = 100\n\n'
        '[schedule]\nevery = "3s"\nimages_every = "3s"\n\n'
        '[metrics]\nport = 9464\nhost = "0.0.0.0"\n\n'
        '[images]\nenabled = true\ndir = "/var/lib/tasksync-images"\n'
        'allow_hosts = ["127.0.0.1"]\nmax_requests_per_second = 100\n'
    )
    token, password, port = f"tok-{os.urandom(6).hex()}", f"pw-{os.urandom(6).hex()}", free_port()
    env = {
        **podman.env,
        "POSTGRES_IMAGE": POSTGRES,
        "TASKSYNC_IMAGE": image,
        "TASKSYNC_TOKEN": token,
        "POSTGRES_PASSWORD": password,
        "TASKSYNC_METRICS_PORT": str(port),
    }
    compose = [podman.compose, "-p", project]
    box = f"{project}_tasksync_1"

    def inside(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", box, *args, check=check)

    def wait(cond: Callable[[], bool], what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                logs = podman("logs", box, check=False)
                out = logs.stdout[-3000:] + logs.stderr[-3000:]
                pytest.fail(f"timed out waiting for {what}; tasksync's log:\n{out}")
            time.sleep(1)

    try:
        up = subprocess.run(
            [*compose, "up", "-d"], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        # podman-compose 1.0 does not wait for the database's healthcheck (depends_on
        # condition): tasksync's `db upgrade` fails until PostgreSQL is up, and the restart
        # policy tries again; this waits for the outcome.
        wait(
            lambda: podman("healthcheck", "run", box, check=False).returncode == 0,
            "the healthcheck to pass",
        )
        podman(
            "exec",
            "-d",
            box,
            "tasksync",
            "simulate",
            "--port",
            "8080",
            "--tasks",
            "300",
            "--token-env",
            "TASKSYNC_TOKEN",
            "--images",
        )
        wait(
            lambda: (
                'tasksync_last_success_timestamp_seconds{kind="sync",source="sim"}' in scrape(port)
            ),
            "a successful sync in the metrics",
        )
        wait(
            lambda: ", 0 pending," in inside("tasksync", "status", "--no-server").stdout,
            "the image backlog to be fetched",
        )
        status = inside("tasksync", "status", "--no-server").stdout
        assert "source sim: 300 tasks archived (0 gone" in status
        pictures = re.search(
            r"images +(\d+) fetched \(.*\), 0 pending, 0 failed, 0 expired", status
        )
        assert pictures is not None, status
        verify = inside("tasksync", "images", "verify", check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        files = inside("sh", "-c", "find /var/lib/tasksync-images -type f | wc -l").stdout.strip()
        assert int(pictures.group(1)) > int(files) > 0  # links share files: named by their hash
        assert f"{files} files intact, 0 missing, 0 corrupted" in verify.stdout
        current = inside("tasksync", "db", "current").stdout
        assert current.startswith("current: ") and "current: none" not in current
        url = inside("sh", "-c", "echo $TASKSYNC_DATABASE_URL").stdout.strip()
        assert url == "postgresql+psycopg://tasksync@db:5432/tasksync"

        config = podman("image", "inspect", image, "--format", "{{json .Config}}").stdout
        history = podman("history", "--no-trunc", image).stdout
        logs = podman("logs", box)
        for secret in (token, password):
            assert secret not in config + history + logs.stdout + logs.stderr

        # The healthcheck can fail: the same image without a metrics endpoint is unhealthy.
        idle = podman("run", "-d", "--network", "none", image, "sleep", "60").stdout.strip()
        sick = podman("healthcheck", "run", idle, check=False)
        podman("rm", "-f", "-v", "-t", "0", idle)
        assert (sick.returncode, sick.stdout.strip()) == (1, "unhealthy")

        podman("stop", "-t", "45", box, timeout=120)
        state = podman("inspect", box, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert state == "0"
        assert "SIGTERM received" in podman("logs", box).stderr + podman("logs", box).stdout
    finally:
        subprocess.run([*compose, "down"], cwd=work, env=env, capture_output=True, timeout=300)
        podman(
            "volume",
            "rm",
            "-f",
            *(f"{project}_{v}" for v in ("pgdata", "state", "images")),
            check=False,
        )
        podman("network", "rm", "-f", f"{project}_default", check=False)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_systemd_unit_runs_tasksync_under_systemd_with_its_sandbox(images: Images) -> None:
    """The unit `tasksync deploy systemd` prints, under a real systemd (PID 1 of a container:
    there is none on the test machine): `db upgrade` then the daemon start; it syncs and
    sweeps (the sweep's fetch process included) inside its sandbox, which is in force (a
    read-only /, a writable /var/lib/tasksync, no capabilities, no new privileges, a syscall
    filter); `systemctl stop` ends it by SIGTERM, successfully. --privileged lets systemd set
    up the namespaces the sandbox is made of; the container has no network."""
    podman = images.podman
    box = f"tssystemd{os.getpid()}"
    podman(
        "run",
        "-d",
        "--name",
        box,
        "--privileged",
        "--systemd=always",
        "--network",
        "none",
        images.systemd,
    )

    def inside(*args: str, check: bool = True) -> str:
        return podman("exec", box, *args, check=check).stdout

    def journal() -> str:
        return inside("journalctl", "-u", "tasksync", "--no-pager", "-o", "cat", check=False)

    def wait(cond: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; the journal:\n{journal()[-4000:]}")
            time.sleep(1)

    try:
        wait(
            lambda: (
                inside("systemctl", "is-system-running", check=False).strip()
                in ("running", "degraded")
            ),
            "systemd to boot",
        )
        inside("systemctl", "start", "sim.service")
        inside("systemctl", "start", "tasksync.service")
        wait(lambda: "kind=sync outcome=ok" in journal(), "a successful sync")
        wait(lambda: "kind=sweep outcome=ok" in journal(), "a successful sweep")
        assert "database sqlite:////var/lib/tasksync/tasksync.db at revision" in journal()
        assert "outcome=failed" not in journal()

        pid = inside("systemctl", "show", "-p", "MainPID", "--value", "tasksync").strip()
        status = inside("cat", f"/proc/{pid}/status")
        assert re.search(r"^CapEff:\s+0+$", status, re.M)
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        assert re.search(r"^Seccomp:\s+2$", status, re.M)  # a filter is in force
        mounts = {
            f[4]: f[5].split(",")[0]
            for f in (line.split() for line in inside("cat", f"/proc/{pid}/mountinfo").splitlines())
        }
        assert (mounts["/"], mounts["/var/lib/tasksync"], mounts["/home"]) == ("ro", "rw", "ro")
        user = inside("stat", "-c", "%U", f"/proc/{pid}").strip()
        assert user == "tasksync"

        inside("systemctl", "stop", "tasksync.service")
        shown = inside("systemctl", "show", "tasksync", "-p", "Result", "-p", "ActiveState")
        assert shown.split() == ["Result=success", "ActiveState=inactive"]
        assert "SIGTERM received" in journal()
        assert "daemon stopped" in journal()
    finally:
        podman("rm", "-f", "-v", "-t", "5", box, check=False)
