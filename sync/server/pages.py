"""What a page of the task list is, whichever family served it: `ServerPage`, the counts a
server gives (`count`) and how a reply's JSON is parsed (`loads`).

A leaf of the server side: the families build pages with it, the client and the read side
hand them on; it makes no request and knows no family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from sync.tasks.records import MJ, SHAPES, task_id

MAX_COUNT = 2**53  # a page number or total beyond this is not a real count: unknown


@dataclass(frozen=True, slots=True)
class ServerPage:
    """One page of the task list as the server sent it, newest first. `keys` orders the walk
    (the task ids, unless the family orders by something else, such as new-api's row ids);
    `body` is the reply's bytes, when asked for."""

    number: int
    size: int
    tasks: list[Any]
    total: int | None
    last: bool
    body: bytes | None = None
    shape: str = MJ.name
    walk_keys: list[str] | None = field(default=None, compare=False)

    @property
    def ids(self) -> list[str]:
        """The ids on the page, as the archive stores them."""
        shape = SHAPES[self.shape]
        return [tid for tid in (task_id(t, shape) for t in self.tasks) if tid is not None]

    @property
    def keys(self) -> list[str]:
        return self.walk_keys if self.walk_keys is not None else self.ids


def count(value: Any) -> int | None:
    """A count from the server, or None when it is missing, not an integer or out of range."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def loads(content: bytes) -> Any:
    """Parse a JSON reply: orjson, or for what it refuses but JSON allows (a number beyond a
    double, such as 1e400) the standard library, so one odd value never sinks a page."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        try:
            return json.loads(content)
        except RecursionError:
            raise ValueError("nested too deeply") from None
