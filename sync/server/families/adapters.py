"""Each family name of `FAMILIES`, and the adapter that reads its list: `named` makes a fresh
one for a configured `api`."""

from __future__ import annotations

from sync.server.families import FAMILIES
from sync.server.families.base import Family
from sync.server.families.ids import IdsOnly
from sync.server.families.newapi import NewAPI
from sync.server.families.novicezk import NoviceZK
from sync.server.families.plus import Plus
from sync.server.families.trueai import TrueAI

_KINDS: dict[str, type[Family]] = {k.name: k for k in (Plus, TrueAI, NoviceZK, NewAPI, IdsOnly)}
# In the registry's order; a name without an adapter fails here, at import.
ADAPTERS: dict[str, type[Family]] = {name: _KINDS[name] for name in FAMILIES}


def named(api: str) -> Family | None:
    """A fresh adapter for a configured `api` (None for "auto": detection decides)."""
    if api == "auto":
        return None
    return ADAPTERS[api]()
