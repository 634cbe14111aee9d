"""Typed, validated configuration: TOML file, environment and flags (SPEC §2, §3).

Precedence is flag > environment > config file > default. Validation errors name the file and
the key; secrets are only ever read from `token_env` / `token_file` and never printed.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sync.errors import ConfigError

DEFAULT_CONFIG = Path("tasksync.toml")
INTERVAL_RE = re.compile(r"^(\d+)\s*(s|m|h)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Strict):
    url: str = "sqlite:///tasksync.db"

    @field_validator("url")
    @classmethod
    def _parse(cls, v: str) -> str:
        # Imported here: the fetch process loads this module and has no use for SQLAlchemy.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(v)
        except ArgumentError:
            raise ValueError("not a database URL (e.g. sqlite:///tasksync.db)") from None
        return v


class SourceSettings(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    base_url: str = Field(pattern=r"^https?://[^\s]+$")
    api: Literal["plus"] = "plus"
    token_env: str | None = None
    token_file: Path | None = None
    auth_header: Literal["mj-api-secret", "Authorization"] = "mj-api-secret"
    page_size: int = Field(default=100, ge=1, le=100)
    max_requests_per_second: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    retry_attempts: int = Field(default=6, ge=1, le=50)
    retry_budget_s: float = Field(default=120.0, gt=0)
    concurrency: int = Field(default=2, ge=1, le=32)
    ca_bundle: Path | None = None
    head_margin: int = Field(default=100, ge=1)
    mass_gone_share: float = Field(default=0.2, ge=0, le=1)
    sync: str | None = None
    sweep: str | None = None

    @field_validator("ca_bundle")
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"CA bundle {v} is not a readable file")
        return v

    @model_validator(mode="after")
    def _one_token_source(self) -> SourceSettings:
        if self.token_env and self.token_file:
            raise ValueError("set token_env or token_file, not both")
        return self

    def token(self) -> str | None:
        """The secret, read at use time from the environment or the file."""
        if self.token_env:
            value = os.environ.get(self.token_env)
            if not value:
                raise ConfigError(
                    f"source {self.name!r}: environment variable {self.token_env} "
                    "(token_env) is not set"
                )
            return value.strip()
        if self.token_file:
            try:
                return self.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"source {self.name!r}: cannot read token_file {self.token_file}: "
                    f"{exc.strerror}"
                ) from None
        return None


class ScheduleSettings(_Strict):
    sync: str = "*/2 * * * *"
    sweep: str = "17 3 * * *"
    timezone: str = "UTC"
    every: str | None = None
    sweep_every: str | None = None
    run_at_start: bool = True
    misfire_grace_s: int = Field(default=300, ge=1)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("every", "sweep_every")
    @classmethod
    def _interval(cls, v: str | None) -> str | None:
        if v is not None and not INTERVAL_RE.match(v):
            raise ValueError("an interval like '30s', '5m' or '1h'")
        return v


class MetricsSettings(_Strict):
    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"


class Settings(_Strict):
    database: DatabaseSettings = DatabaseSettings()
    sources: list[SourceSettings] = []
    schedule: ScheduleSettings = ScheduleSettings()
    metrics: MetricsSettings = MetricsSettings()
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[SourceSettings]) -> list[SourceSettings]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique: {', '.join(dupes)}")
        return v

    def source(self, name: str | None) -> list[SourceSettings]:
        """The sources a command should act on: one by name, or all."""
        if not self.sources:
            raise ConfigError(f"{self.path or 'config'}: no [[sources]] configured")
        if name is None:
            return list(self.sources)
        for s in self.sources:
            if s.name == name:
                return [s]
        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(f"unknown source {name!r} (configured: {known})")


def interval_seconds(text: str) -> int:
    """'30s' → 30, '5m' → 300, '1h' → 3600."""
    m = INTERVAL_RE.match(text)
    if not m:
        raise ConfigError(f"bad interval {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    loc = _loc(tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key {loc!r}"
    if first["type"] == "missing":
        return f"{where}: missing required key {loc!r}"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{where}: key {loc!r}: {msg}"


def load(
    config_path: str | None = None,
    db_url: str | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the effective settings from flag, environment, file and defaults."""
    env = os.environ if environ is None else environ
    path_text = config_path or env.get("TASKSYNC_CONFIG")
    path: Path | None = Path(path_text) if path_text else None
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    url = db_url or env.get("TASKSYNC_DATABASE_URL")
    if url:
        data.setdefault("database", {})
        if isinstance(data["database"], dict):
            data["database"] = {**data["database"], "url": url}
    where = str(path) if path else "settings"
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None
    return settings.model_copy(update={"path": path})


def redacted_url(url: str) -> str:
    """A database URL with its password replaced by ***."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def effective_view(settings: Settings) -> dict[str, Any]:
    """The settings as `config check` prints them: secrets redacted, token sources named."""
    out: dict[str, Any] = settings.model_dump(mode="json", exclude={"path"})
    out["database"]["url"] = redacted_url(settings.database.url)
    for src, view in zip(settings.sources, out["sources"], strict=True):
        if src.token_env:
            state = "set" if os.environ.get(src.token_env) else "NOT SET"
            view["token"] = f"*** (from environment {src.token_env}, {state})"
        elif src.token_file:
            state = "readable" if os.access(src.token_file, os.R_OK) else "NOT READABLE"
            view["token"] = f"*** (from file {src.token_file}, {state})"
        else:
            view["token"] = "(none)"
    return out
