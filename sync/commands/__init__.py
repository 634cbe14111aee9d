"""The commands of `tasksync`, a module per group (`sync.cli` puts them together); here, the
option types they share."""

from __future__ import annotations

from typing import Any

import click


class FiniteRange(click.FloatRange):
    """A FloatRange that also refuses NaN (which passes every comparison)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if rv != rv:
            self.fail(f"{value!r} is not a number", param, ctx)
        return rv
