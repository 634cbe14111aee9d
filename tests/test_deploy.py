"""The deployment kit (sync/deploy/) checked by the real tools: promtool runs the alert rules'
unit tests, systemd-analyze verifies the printed unit, and podman builds the image and starts
compose.yaml (tasksync + PostgreSQL) — see test_container_*. Each check is also shown to fail
on a broken input, so a green run means something.

A tool that is not installed skips its tests with the reason; under CI=true (where .ci/run
installs them) a missing tool fails instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from sync.metrics import Metrics

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
    for collector in Metrics().registry._collector_to_names:
        for family in collector.describe():
            out.add(family.name)
            if family.type == "counter":
                out.add(family.name + "_total")
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
