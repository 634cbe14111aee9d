"""Every error tasksync raises on purpose, and the exit code the CLI maps it to.

    TasksyncError                 base; carries `exit_code`
    ├── ConfigError               bad config file, flag or environment value    (exit 2)
    ├── QueryRefused              `tasksync query` input that could write       (exit 2)
    ├── ServerError               the task server failed us after retries       (exit 1)
    │   ├── ServerUnreachable     connection refused, DNS, timeouts, a request past its deadline
    │   ├── BadResponse           not JSON, wrong shape, HTML from a proxy, truncated body,
    │   │                         a reply larger than max_response_mb
    │   ├── RunawayList           a list that never ends (pages past the server's own count,
    │   │                         or the same page over and over)
    │   ├── ServerRefused         HTTP 200 with {"success": false, "message": ...}
    │   ├── HTTPStatusError       an HTTP error status that retries did not cure
    │   ├── ServerBusy            429 or 5xx that retries did not cure (a bad moment, not a
    │   │                         verdict on the request: auto-detection stops on it)
    │   └── AuthRefused           401/403: the server refused the token        (exit 2)
    ├── DatabaseError             database unreachable or failing               (exit 1)
    ├── MassGoneRefused           a sweep would mark too much of the archive gone (exit 4)
    └── LockHeld                  another process is syncing this source       (exit 3)

Library code raises these; only `sync/cli.py` turns them into messages and exit codes. Messages
are one line and never contain a secret (the client never puts a token in a message). Text that
comes from a server (its messages, ids, content types) passes through `printable` first, so it
cannot forge log lines or carry terminal escape codes.
"""

from __future__ import annotations

import json

MAX_QUOTED = 300


_SECRETS: set[str] = set()


def keep_secret(secret: str) -> None:
    """Register a token: `printable` replaces it (and its JSON-escaped form) with *** from now
    on, wherever server text is quoted (a server may echo the token in anything it sends)."""
    if len(secret) >= 6:  # a shorter one would scrub ordinary words; Client.say still does
        _SECRETS.update({secret, json.dumps(secret)[1:-1]})


def printable(text: object, limit: int = MAX_QUOTED) -> str:
    """Untrusted text made safe to print: registered secrets scrubbed, one line, control and
    other unprintable characters escaped (as in a Python string literal), cut to `limit`
    characters."""
    s = text if isinstance(text, str) else str(text)
    for secret in _SECRETS:
        if secret in s:
            s = s.replace(secret, "***")
    if not s.isprintable():
        s = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


class TasksyncError(Exception):
    """Base of all deliberate tasksync errors."""

    exit_code = 1


class ConfigError(TasksyncError):
    """The config file, a flag or an environment variable is invalid."""

    exit_code = 2


class QueryRefused(TasksyncError):
    """`tasksync query` was given something other than one read-only statement."""

    exit_code = 2


class ServerError(TasksyncError):
    """The task server could not give us what we asked for."""


class ServerUnreachable(ServerError):
    """No HTTP reply at all: connection refused, DNS failure, timeout."""


class BadResponse(ServerError):
    """A reply that is not the JSON shape we expect (HTML page, empty or truncated body)."""


class ServerRefused(ServerError):
    """An HTTP 200 reply that says `success: false` (after retries)."""


class RunawayList(ServerError):
    """A walk that would never end: the server keeps answering past its own page count, or with
    the same page again and again."""


class ServerBusy(ServerError):
    """429 or 5xx, after retries: the server is having a bad moment."""


class HTTPStatusError(ServerError):
    """An HTTP error status (after retries, where it is retryable)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class AuthRefused(ServerError):
    """401 or 403: the server refused the token. Never retried."""

    exit_code = 2


class DatabaseError(TasksyncError):
    """The archive database is unreachable or failed mid-run."""


class MassGoneRefused(TasksyncError):
    """A sweep would mark more than the allowed share of the archive gone at once."""

    exit_code = 4


class LockHeld(TasksyncError):
    """Another process holds this source's writer lock; the run was skipped."""

    exit_code = 3
