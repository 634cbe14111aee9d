"""The config loader as a careless or hostile user would fill it in: every bad value is one
ConfigError naming the key and the file, and never echoing what could be a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sync.archive.urls import redacted_url
from sync.config import load
from sync.errors import ConfigError
from sync.jobs.crontab import cron_fields

SOURCE = '[[sources]]\nname = "main"\nbase_url = "http://mj.example.com"\n'


def load_text(tmp_path: Path, text: str, **env: str) -> Any:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load(str(path), environ=dict(env))


@pytest.mark.parametrize(
    ("line", "words"),
    [
        pytest.param("page_size = true", ["page_size", "integer"], id="bool-as-int"),
        pytest.param('page_size = "50"', ["page_size", "integer"], id="string-as-int"),
        pytest.param("timeout_s = inf", ["timeout_s", "finite"], id="inf"),
        pytest.param("timeout_s = nan", ["timeout_s", "finite"], id="nan"),
        pytest.param("retry_budget_s = true", ["retry_budget_s", "number"], id="bool-as-float"),
        pytest.param("timeout_s = 1e9", ["timeout_s", "3600"], id="absurd-timeout"),
        pytest.param("max_response_mb = 0", ["max_response_mb", "greater than 0"], id="zero-cap"),
        pytest.param('sync = "61 * * * *"', ["sources[0].sync", "cron"], id="bad-cron"),
        pytest.param('sweep = "0 0 * *"', ["sources[0].sweep", "5 fields"], id="short-cron"),
        pytest.param('token_env = "A-B"', ["token_env"], id="bad-env-name"),
        pytest.param(
            "max_requests_per_second = 1e-300", ["max_requests_per_second", "0.001"], id="tiny-rate"
        ),
    ],
)
def test_config_bad_source_values_are_named(tmp_path: Path, line: str, words: list[str]) -> None:
    """Wrong types, non-finite numbers and bad cron expressions are refused, key named."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, SOURCE + line + "\n")
    msg = str(info.value)
    assert str(tmp_path / "c.toml") in msg
    for w in words:
        assert w in msg, msg


SECRET = "s3cretCANARY"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        pytest.param(
            f"http://user:{SECRET}@mj.example.com", ["credentials", "token_env"], id="userinfo"
        ),
        pytest.param(f"https://{SECRET}@mj.example.com", ["credentials"], id="user-only"),
        pytest.param(
            f"https://mj.example.com/?key={SECRET}", ["query string", "token_file"], id="query"
        ),
        pytest.param(f"https://mj.example.com/#{SECRET}", ["fragment"], id="fragment"),
        pytest.param("http://mj.example.com:abc", ["port"], id="bad-port"),
        pytest.param("http://mj.example.com:99999", ["port"], id="port-range"),
        pytest.param("ftp://mj.example.com", ["http"], id="scheme"),
        pytest.param("https://mj.example.com/mj/", ["/mj"], id="trailing-mj"),
        pytest.param("http://", ["host"], id="no-host"),
        pytest.param(f"http://mj.example.com/ {SECRET}", ["spaces"], id="space"),
        pytest.param(f"http://mj.example.com/\n{SECRET}", ["control"], id="newline"),
    ],
)
def test_config_base_url_refuses_secrets_and_junk(
    tmp_path: Path, url: str, words: list[str]
) -> None:
    """A base_url with credentials, a query, a bad port or junk: exit-2 error saying where
    credentials go, and never the value itself."""
    text = f'[[sources]]\nname = "main"\nbase_url = """{url}"""\n'
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    msg = str(info.value)
    assert "base_url" in msg and SECRET not in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(f"{SECRET}\nsecond line\n", ["more than one line"], id="two-lines"),
        pytest.param(f"{SECRET}\r\n\r\n{SECRET}", ["more than one line"], id="crlf"),
        pytest.param(f"{SECRET}é", ["non-ASCII"], id="non-ascii"),
        pytest.param(f"{SECRET}\x01", ["control"], id="control"),
        pytest.param("\n\n", ["empty"], id="empty"),
    ],
)
def test_config_token_file_is_one_printable_line(
    tmp_path: Path, content: str, words: list[str]
) -> None:
    """A token file with a second line (or odd characters) fails when the config loads,
    naming the file and never the token."""
    token = tmp_path / "token"
    token.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, SOURCE + f'token_file = "{token}"\n')
    msg = str(info.value)
    assert str(token) in msg and SECRET not in msg
    for w in words:
        assert w in msg


def test_config_token_env_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same checks for a token from the environment, naming the variable."""
    monkeypatch.setenv("MJ_T", f"{SECRET}\nx")
    with pytest.raises(ConfigError, match=r"MJ_T.*more than one line") as info:
        load_text(tmp_path, SOURCE + 'token_env = "MJ_T"\n')
    assert SECRET not in str(info.value)
    monkeypatch.setenv("MJ_T", f"  {SECRET}\n")  # surrounding whitespace is trimmed
    settings = load_text(tmp_path, SOURCE + 'token_env = "MJ_T"\n')
    assert settings.sources[0].token() == SECRET


def test_config_missing_token_is_only_an_error_when_needed(tmp_path: Path) -> None:
    """An unset token_env does not stop `query` or `db upgrade` from loading the config."""
    settings = load_text(tmp_path, SOURCE + 'token_env = "NOT_SET_ANYWHERE"\n')
    with pytest.raises(ConfigError, match=r"NOT_SET_ANYWHERE.*not set"):
        settings.sources[0].token()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param('[schedule]\ntimezone = "Mars/Olympus"\n', ["timezone", "Mars"], id="tz"),
        pytest.param('[schedule]\nsync = "*/2 * * *"\n', ["schedule.sync", "5 fields"], id="cron"),
        pytest.param('[schedule]\nsweep = "0 0 * * 6-0"\n', ["backwards"], id="dow-backwards"),
        pytest.param('[schedule]\nevery = "0s"\n', ["schedule.every"], id="zero-interval"),
        pytest.param("[schedule]\nrun_at_start = 1\n", ["run_at_start", "boolean"], id="int-bool"),
        pytest.param('[database]\nurl = "oracle://x/y"\n', ["unsupported", "oracle"], id="oracle"),
        pytest.param(
            '[database]\nurl = "mysql+mysqldb://x/y"\n', ["unsupported", "pymysql"], id="driver"
        ),
        pytest.param('[database]\nurl = "not a url"\n', ["database.url"], id="not-url"),
        pytest.param("[query]\ntimeout_s = 0\n", ["query.timeout_s"], id="query-timeout"),
        pytest.param('[query]\nurl = "mssql://x"\n', ["query.url", "unsupported"], id="query-url"),
        pytest.param(
            '[schedule]\nsync = "0 0 31 2 *"\n', ["schedule.sync", "never fires"], id="feb-31"
        ),
        pytest.param(
            "[schedule]\nmisfire_grace_s = 100000000000000000\n",
            ["misfire_grace_s", "86400"],
            id="huge-grace",
        ),
        pytest.param(
            '[schedule]\nevery = "99999999999999h"\n', ["schedule.every", "8784h"], id="huge-every"
        ),
        pytest.param('[database]\nurl = "mysql:///"\n', ["names no database"], id="no-database"),
        pytest.param('[database]\nurl = "postgresql://"\n', ["names no database"], id="pg-bare"),
        pytest.param(
            '[database]\nurl = "postgresql://u:SEC@RETPW@h/x"\n', ["%40"], id="raw-at-in-password"
        ),
        pytest.param('[database]\nurl = "sqlite:///a.db?timeout=abc"\n', ["?options"], id="opt"),
        pytest.param('[database]\nurl = "sqlite://"\n', ["in-memory"], id="sqlite-memory"),
        pytest.param('[images]\ndir = ""\n', ["images.dir", "folder"], id="images-dir-empty"),
        pytest.param("[images]\nroles = []\n", ["images.roles"], id="images-no-roles"),
        pytest.param('[images]\nallow_hosts = ["*"]\n', ["wildcard"], id="images-wildcard"),
        pytest.param(
            "[images]\nmax_requests_per_second = 1e-300\n",
            ["images.max_requests_per_second", "0.001"],
            id="images-tiny-rate",
        ),
    ],
)
def test_config_bad_schedule_and_database(tmp_path: Path, text: str, words: list[str]) -> None:
    """`config check` catches a bad cron, time zone or database URL before any run does."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    for w in words:
        assert w in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("dow", "names"),
    [
        ("0-6", "sun,mon,tue,wed,thu,fri,sat"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("*/2", "sun,tue,thu,sat"),
        ("5-7", "sun,fri,sat"),
        ("7", "sun"),
        ("sat,sun", "sun,sat"),
        ("*", "*"),
    ],
)
def test_cron_weekdays_follow_crontab(dow: str, names: str) -> None:
    """Day-of-week numbers mean what crontab says (0 and 7 are Sunday), ranges included."""
    assert cron_fields(f"0 3 * * {dow}")["day_of_week"] == names


def test_redacted_url_hides_password_and_secret_parameters() -> None:
    """A database URL's password and password-like query parameters are shown as ***."""
    shown = redacted_url(f"postgresql://u:{SECRET}@h/db?sslpassword={SECRET}&sslmode=require")
    assert SECRET not in shown and "sslmode=require" in shown and "***" in shown


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "folder"])
def test_config_and_token_files_must_be_regular_files(tmp_path: Path, special: str) -> None:
    """A config file or token file that is /dev/zero, a FIFO or a folder is refused at once
    (it neither blocks nor fills memory)."""
    import os

    path = Path(special)
    if special == "fifo":
        path = tmp_path / "f"
        os.mkfifo(path)
    elif special == "folder":
        path = tmp_path
    with pytest.raises(ConfigError, match=r"not a regular file"):
        load(str(path), environ={})
    conf = load_text(tmp_path, SOURCE + f'token_file = "{path}"\n')
    with pytest.raises(ConfigError, match=r"not a regular file"):
        conf.sources[0].token()


def test_config_files_have_a_size_cap(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load(str(big), environ={})
