"""Reading the small regular files settings name (the config file, a token file, an ids
file): refused at once when they are anything else, never read past a size limit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sync.errors import ConfigError


def read_small_file(path: Path, limit: int, what: str) -> str:
    """A regular file's UTF-8 text, at most `limit` bytes. Anything else (a folder, a FIFO,
    /dev/zero) is refused at once instead of blocking or filling memory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO does not block the open
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read it: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{what}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{what}: larger than {limit:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text") from None
