"""Guards for `tasksync query`: one statement, read-only keywords, and (SQLite) an authorizer.

These are the first layer; the second is the database itself (SQLite opened read-only with
`query_only`, PostgreSQL and MariaDB in a READ ONLY transaction), so a write that slips past
the text check is still refused.
"""

from __future__ import annotations

import sqlite3

from sync.errors import QueryRefused

READ_KEYWORDS = {"SELECT", "WITH", "EXPLAIN", "VALUES", "PRAGMA", "SHOW", "DESCRIBE", "DESC"}

# PRAGMAs whose argument names a table or index to describe, not a value to set.
READ_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "foreign_key_list"}

_ALLOWED_SQLITE = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}


def _strip(sql: str) -> str:
    """The text with comments and quoted parts blanked out."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif ch == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(" " * (j - i))
            i = j
        elif ch in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            j = min(j + 1, n)
            out.append(ch + " " * (j - i - 2) + (ch if j - i > 1 else ""))
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_statement(sql: str) -> None:
    """Refuse empty, multi-statement or non-read input with a one-line reason."""
    bare = _strip(sql)
    body = bare.strip().rstrip(";").strip()
    if not body:
        raise QueryRefused("query refused: empty statement")
    if ";" in body:
        raise QueryRefused("query refused: only one statement at a time")
    words = body.upper().split()
    if "INTO" in words:  # SELECT ... INTO OUTFILE / INTO new_table write, whatever the verb
        raise QueryRefused("query refused: SELECT ... INTO writes; only plain reads are allowed")
    first = words[0].strip("(")
    if first not in READ_KEYWORDS:
        raise QueryRefused(
            f"query refused: {first} is not a read-only statement "
            "(tasksync query runs SELECT, WITH, EXPLAIN, VALUES, PRAGMA reads)"
        )


def sqlite_authorizer(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
) -> int:
    """Allow reads only: no ATTACH, no writing PRAGMA, no DML or DDL of any kind."""
    if action in _ALLOWED_SQLITE:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg2 is None or (arg1 or "").lower() in READ_PRAGMAS):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY
