"""Typed, validated configuration: TOML file, environment and flags.

Precedence is flag > environment > config file > default. Validation errors name the file and
the key and never echo a value that could be a secret; secrets are only ever read from
`token_env` / `token_file`, checked to be one printable line when the config loads, and never
printed.

Typed settings only: what a value means is checked where it is used, through leaves that load
nothing heavy (schedule expressions: `sync.jobs.crontab`; database URLs: `sync.archive.urls`;
the files settings name: `sync.files`). Nothing here connects to a server or a database.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sync.archive.urls import check_database_url, redacted_url
from sync.errors import ConfigError
from sync.files import read_small_file
from sync.jobs.crontab import check_cron, check_interval, check_timezone
from sync.server.families import FAMILIES

DEFAULT_CONFIG = Path("tasksync.toml")


def _int(default: int, **bounds: Any) -> Any:
    """An integer field: `true` or "5" are not numbers."""
    return Field(default=default, strict=True, **bounds)


def _float(default: float | None, **bounds: Any) -> Any:
    """A number field: finite, and `true` is not a number."""
    return Field(default=default, strict=True, allow_inf_nan=False, **bounds)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Strict):
    url: str = "sqlite:///tasksync.db"

    _check = field_validator("url")(check_database_url)


class QuerySettings(_Strict):
    """`tasksync query`: an optional separate (read-only) login, and a statement timeout."""

    url: str | None = None
    timeout_s: float = _float(30.0, gt=0, le=86_400)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else check_database_url(v)


def check_base_url(v: str) -> str:
    """An http(s) URL with a host and nothing secret in it: credentials go in token_env or
    token_file, never in a URL that ends up in logs. The value itself is never echoed."""
    where = "put the token in token_env or token_file instead"
    if any(c.isspace() for c in v) or not v.isprintable():
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(v)
        port = parts.port
    except ValueError:
        raise ValueError("is not a valid URL (check the host and the port)") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"must not contain credentials (user:password@); {where}")
    if parts.query or v.rstrip("/").endswith("?"):
        raise ValueError(f"must not contain a query string (?...); {where}")
    if parts.fragment or "#" in v:
        raise ValueError("must not contain a fragment (#...)")
    if not parts.hostname:
        raise ValueError("has no host")
    if port == 0:
        raise ValueError("has port 0")
    if parts.path.rstrip("/").endswith("/mj"):
        raise ValueError("ends in /mj: leave it out (tasksync adds /mj/... itself)")
    return v


def check_token(value: str, where: str) -> str:
    """A token as it will be sent: one line of printable ASCII, surrounding whitespace
    (a file's final newline) removed. Errors name `where`, never the value."""
    token = value.strip()
    if not token:
        raise ConfigError(f"{where} is empty")
    if "\n" in token or "\r" in token:
        raise ConfigError(
            f"{where} has more than one line; a token is a single line and nothing else"
        )
    if not token.isascii():
        raise ConfigError(f"{where} contains non-ASCII characters; an HTTP header cannot carry it")
    if any(not (" " <= c <= "~") for c in token):
        raise ConfigError(f"{where} contains control characters")
    return token


class SourceSettings(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    base_url: str
    api: str = "auto"  # "auto" or a name of sync.server.families.FAMILIES
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    token_file: Path | None = None
    auth_header: Literal["mj-api-secret", "Authorization"] = "mj-api-secret"
    page_size: int = _int(100, ge=1, le=100)
    max_requests_per_second: float = _float(5.0, ge=0.001, le=100_000)
    timeout_s: float = _float(30.0, gt=0, le=3600)
    retry_attempts: int = _int(6, ge=1, le=50)
    retry_budget_s: float = _float(120.0, gt=0, le=86_400)
    max_response_mb: float = _float(64.0, gt=0, le=4096)
    concurrency: int = _int(2, ge=1, le=32)
    ca_bundle: Path | None = None
    head_margin: int = _int(100, ge=1, le=1_000_000)
    mass_gone_share: float = _float(0.2, ge=0, le=1)
    newapi_user: int | None = Field(default=None, strict=True, ge=1)
    newapi_scope: Literal["self", "admin"] = "self"
    ids_query: str | None = None
    sync: str | None = None
    sweep: str | None = None

    _base_url = field_validator("base_url")(check_base_url)

    @field_validator("api", mode="before")
    @classmethod
    def _family(cls, v: Any) -> Any:
        names = ("auto", *FAMILIES)
        if v not in names:
            quoted = [f"'{n}'" for n in names]
            raise ValueError(f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}")
        return v

    @field_validator("ca_bundle")
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"CA bundle {v} is not a readable file")
        return v

    @field_validator("sync", "sweep")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return None if v is None else check_cron(v)

    @model_validator(mode="after")
    def _one_token_source(self) -> SourceSettings:
        if self.token_env and self.token_file:
            raise ValueError("set token_env or token_file, not both")
        return self

    def _token_where(self) -> str:
        if self.token_env:
            return f"source {self.name!r}: environment variable {self.token_env} (token_env)"
        return f"source {self.name!r}: token_file {self.token_file}"

    def token(self) -> str | None:
        """The secret, read at use time from the environment or the file, and checked."""
        if self.token_env:
            value = os.environ.get(self.token_env)
            if not value:
                raise ConfigError(f"{self._token_where()} is not set")
            return check_token(value, self._token_where())
        if self.token_file:
            value = read_small_file(self.token_file, 65_536, self._token_where())
            return check_token(value, self._token_where())
        return None

    def check_token_if_present(self) -> None:
        """At load time: a secret that is there must be usable; one that is missing is only an
        error for the commands that need it."""
        present = (self.token_env and os.environ.get(self.token_env)) or (
            self.token_file and self.token_file.is_file()
        )
        if present:
            self.token()


class ScheduleSettings(_Strict):
    sync: str = "*/2 * * * *"
    sweep: str = "17 3 * * *"
    timezone: str = "UTC"
    every: str | None = None
    sweep_every: str | None = None
    images: str = "*/5 * * * *"
    images_every: str | None = None
    run_at_start: bool = Field(default=True, strict=True)
    misfire_grace_s: int = _int(300, ge=1, le=86_400)
    shutdown_timeout_s: float = _float(30.0, gt=0, le=3600)

    _tz = field_validator("timezone")(check_timezone)

    @field_validator("sync", "sweep", "images")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_cron(v)

    @field_validator("every", "sweep_every", "images_every")
    @classmethod
    def _interval(cls, v: str | None) -> str | None:
        return None if v is None else check_interval(v)


Role = Literal["image", "grid", "video", "thumbnail"]
ROLES: tuple[Role, ...] = ("image", "grid", "video", "thumbnail")


class ImagesSettings(_Strict):
    """`[images]`: archive the pictures (and videos) of tasks before their links expire."""

    enabled: bool = Field(default=False, strict=True)
    dir: Path = Path("tasksync-images")
    statuses: list[str] = ["SUCCESS"]
    roles: list[Role] = list(ROLES)
    max_mb: float = _float(64.0, gt=0, le=4096)
    concurrency: int = _int(4, ge=1, le=64)
    max_requests_per_second: float = _float(10.0, ge=0.001, le=10_000)
    timeout_s: float = _float(60.0, gt=0, le=3600)
    max_attempts: int = _int(5, ge=1, le=100)
    max_redirects: int = _int(5, ge=0, le=20)
    allow_hosts: list[str] = []

    @field_validator("statuses")
    @classmethod
    def _some_status(cls, v: list[str]) -> list[str]:
        if not v or any(not s.strip() for s in v):
            raise ValueError('a list of task statuses, such as ["SUCCESS"]')
        return v

    @field_validator("roles")
    @classmethod
    def _some_role(cls, v: list[Role]) -> list[Role]:
        if not v:
            raise ValueError(f"a list of link roles, some of {list(ROLES)}")
        return v

    @field_validator("dir", mode="before")
    @classmethod
    def _a_folder(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError('a folder for the files, such as "tasksync-images"')
        return v

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            bare = host.strip("[]")
            if not bare or any(c in bare for c in "/@ \t*?") or bare.count(":") == 1:
                raise ValueError(
                    f"{host!r}: a host name or address, exactly (no port, path or wildcard)"
                )
        return [h.strip("[]").lower() for h in v]


class MetricsSettings(_Strict):
    port: int | None = Field(default=None, strict=True, ge=0, le=65535)
    host: str = "127.0.0.1"


class Settings(_Strict):
    database: DatabaseSettings = DatabaseSettings()
    sources: list[SourceSettings] = []
    schedule: ScheduleSettings = ScheduleSettings()
    metrics: MetricsSettings = MetricsSettings()
    query: QuerySettings = QuerySettings()
    images: ImagesSettings = ImagesSettings()
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
    if config_path == "":
        raise ConfigError("--config: a file path is needed, got an empty one")
    if db_url == "":
        raise ConfigError("--db: a database URL is needed, got an empty one")
    path_text = config_path or env.get("TASKSYNC_CONFIG")
    path: Path | None = Path(path_text) if path_text else None
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    data: dict[str, Any] = {}
    if path is not None:
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        text = read_small_file(path, 1 << 20, f"config file {path}")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    url = db_url or env.get("TASKSYNC_DATABASE_URL")
    if url:
        try:
            check_database_url(url)
        except ValueError as exc:  # named as given, not as a key of the file
            raise ConfigError(f"{'--db' if db_url else 'TASKSYNC_DATABASE_URL'}: {exc}") from None
        data.setdefault("database", {})
        if isinstance(data["database"], dict):
            data["database"] = {**data["database"], "url": url}
    where = str(path) if path else "settings"
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None
    for src in settings.sources:
        src.check_token_if_present()
    images = settings.images
    if path is not None and not images.dir.is_absolute():
        # Relative to the config file, not to wherever the daemon happens to start.
        images = images.model_copy(update={"dir": path.parent / images.dir})
    return settings.model_copy(update={"path": path, "images": images})


def effective_view(settings: Settings) -> dict[str, Any]:
    """The settings as `config check` prints them: secrets redacted, token sources named."""
    out: dict[str, Any] = settings.model_dump(mode="json", exclude={"path"})
    out["database"]["url"] = redacted_url(settings.database.url)
    if settings.query.url:
        out["query"]["url"] = redacted_url(settings.query.url)
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
