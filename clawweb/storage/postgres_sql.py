"""The store's queries, written in SQLite's dialect (engine.py), as psycopg sends them to PostgreSQL.

Three spellings differ, and only these are translated (anything else must be written in the shared subset):
- parameters: ``?`` and ``:name`` become ``%s`` and ``%(name)s``; a literal ``%`` becomes ``%%``;
- ``x IS ?`` (SQLite's null-safe equality, used for owners: None is open mode) becomes ``x IS NULL`` when the
  value is None and ``x = %s`` otherwise: PostgreSQL's ``IS NOT DISTINCT FROM`` would never use an index;
- ``CAST(column AS BLOB)`` (the UTF-8 bytes of a text, for quotas) becomes ``convert_to(column, 'UTF8')``.

A query is parsed once (cached by its text); a call only joins the pieces, so the text psycopg sees is the
same on every call and it prepares the statement once it has run a few times.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

_TOKEN = re.compile(
    r"""(?P<string>'(?:[^']|'')*')"""
    r"""|(?P<cast>::\w+)"""  # PostgreSQL's own cast (pg_indexes' definitions hold them), not a parameter
    r"""|(?P<is>\bIS\s+)(?P<is_param>\?|:\w+)"""
    r"""|(?P<param>\?|:\w+)"""
    r"""|(?P<percent>%)"""
    r"""|CAST\((?P<blob>[\w.]+) AS BLOB\)""",
    re.IGNORECASE,
)

# A parsed query: literal text, and the parameters between it as (name or None for positional, after IS).
Piece = str | tuple[str | None, bool]


@lru_cache(maxsize=1024)
def _parse(sql: str) -> tuple[Piece, ...]:
    pieces: list[Piece] = []
    at = 0
    for found in _TOKEN.finditer(sql):
        pieces.append(sql[at : found.start()])
        at = found.end()
        if found["string"] is not None:
            pieces.append(found["string"].replace("%", "%%"))
        elif found["cast"] is not None:
            pieces.append(found["cast"])
        elif found["percent"] is not None:
            pieces.append("%%")
        elif found["blob"] is not None:
            pieces.append(f"convert_to({found['blob']}, 'UTF8')")
        else:
            param = found["is_param"] or found["param"]
            pieces.append((None if param == "?" else param[1:], found["is"] is not None))
    pieces.append(sql[at:])
    return tuple(pieces)


def translate(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> tuple[str, Sequence[Any] | Mapping[str, Any]]:
    """``sql`` and ``params`` as psycopg takes them."""
    out: list[str] = []
    positional: list[Any] = []
    values = iter(params) if not isinstance(params, Mapping) else None
    for piece in _parse(sql):
        if isinstance(piece, str):
            out.append(piece)
            continue
        name, after_is = piece
        if name is None:
            assert values is not None, f"a ? parameter with named parameters: {sql}"
            value = next(values)
            if after_is and value is None:
                out.append("IS NULL")
                continue
            positional.append(value)
            out.append("= %s" if after_is else "%s")
        else:
            assert isinstance(params, Mapping), f"a :{name} parameter with positional parameters: {sql}"
            if after_is:
                out.append("IS NULL" if params[name] is None else f"= %({name})s")
            else:
                out.append(f"%({name})s")
    return "".join(out), (params if isinstance(params, Mapping) else positional)
