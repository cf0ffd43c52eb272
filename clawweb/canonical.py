"""One canonicalizer for what is forwarded to Ollama: a declarative table per object shape (field -> parser),
and the object sent upstream built from the validated fields alone, each in its canonical spelling.

Why: Ollama decodes with Go's ``encoding/json``, which matches a key to a struct field case-insensitively (with
Unicode simple folding: U+212A KELVIN SIGN is a ``k``, U+017F LATIN SMALL LETTER LONG S an ``s``) and lets the
last of several matching keys win. ``{"model": "qwen3:32b", "MODEL": "qwen3:evil"}`` passes a Python check of
``body["model"]`` and runs ``qwen3:evil``. So in every object Ollama decodes into a struct (a ``Struct`` here):

* a key that folds (``str.casefold``; for ASCII field names it folds every rune Go folds, and a little more,
  such as ``ß`` to ``ss``, which is only stricter) to a field's name but is spelled otherwise is refused with a
  400 naming it: ``'MODEL' is not a field; the field is 'model'``;
* two keys that fold to the same name, the same key twice included, are refused with a 400 naming the key;
* a key that is no field at all is dropped: Ollama ignores unknown keys too, and what it ignores today a newer
  Ollama may read tomorrow (a table may refuse them instead, as ``options`` does);
* the object forwarded holds the table's fields as their parsers returned them, and nothing else.

Free-form values (a JSON schema, tool-call arguments, a tool's parameters) are forwarded as values: Ollama
reads them as raw JSON or maps, where keys are data (a schema's ``properties`` may hold ``Name`` and ``name``),
and nothing in them is a setting the gateway checks; neither rule applies inside them.

``parse_json_object`` (validation.py) decodes with ``object_pairs`` below, so a repeated key, which
``json.loads`` would silently collapse to its last value, is still known here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .errors import ApiError, InvalidField

Parse = Callable[[Any, str, Settings], Any]
"""A field's parser: (the value, where it is, e.g. ``messages[2].role``, settings) -> the value to forward, or
``OMIT``; raises ``ApiError`` naming ``where`` when the value is wrong."""

OMIT: Any = object()  # what a parser returns for a value that means "not set" (Ollama reads null so)


class RepeatedKeys(dict[str, Any]):
    """A decoded JSON object in which ``repeated`` appeared more than once (the dict holds the last value)."""

    def __init__(self, pairs: list[tuple[str, Any]], repeated: str) -> None:
        super().__init__(pairs)
        self.repeated = repeated


def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: a plain dict, or a ``RepeatedKeys`` when a key repeats."""
    decoded = dict(pairs)
    if len(decoded) == len(pairs):
        return decoded
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return RepeatedKeys(pairs, key)
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means one repeats")


@dataclass(frozen=True)
class Field:
    parse: Parse
    required: bool = False
    default: Callable[[Settings], Any] | None = None  # the value forwarded when the key is absent
    forward: bool = True  # False: accepted and checked, never sent upstream


@dataclass(frozen=True)
class Struct:
    """The fields of one object Ollama decodes into a Go struct, by their canonical (exact) names."""

    fields: Mapping[str, Field]
    unknown: str | None = None  # None: unknown keys are dropped; else they are refused, and this says why
    folded: Mapping[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folded", {name.casefold(): name for name in self.fields})


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def canonical(value: Any, shape: Struct, where: str, settings: Settings) -> dict[str, Any]:
    """``value`` checked against ``shape``: the object to forward, or an ``ApiError`` (400) naming the key."""
    if not isinstance(value, dict):
        raise InvalidField(where, "must be an object") if where else ApiError(400, "'request body' must be an object")
    if isinstance(value, RepeatedKeys):
        raise InvalidField(_at(where, value.repeated), "appears more than once; send each field once")
    seen: dict[str, str] = {}
    for key in value:
        folded = key.casefold()
        if folded in seen:
            first, spelled = _at(where, seen[folded]), shape.folded.get(folded, seen[folded])
            problem = f"and '{first}' are one key to Ollama (it matches keys case-insensitively)"
            raise InvalidField(_at(where, key), f"{problem}; send it once, spelled '{spelled}'")
        seen[folded] = key
        name = shape.folded.get(folded)
        if name is not None and name != key:
            raise InvalidField(_at(where, key), f"is not a field; the field is '{_at(where, name)}'")
        if name is None and shape.unknown is not None:
            raise InvalidField(_at(where, key), shape.unknown)
    forwarded: dict[str, Any] = {}
    for name, spec in shape.fields.items():
        if name in value:
            parsed = spec.parse(value[name], _at(where, name), settings)
        elif spec.required:
            raise InvalidField(_at(where, name), "is required")
        elif spec.default is not None:
            parsed = spec.default(settings)
        else:
            continue
        if parsed is not OMIT and spec.forward:
            forwarded[name] = parsed
    return forwarded


def struct(shape: Struct) -> Parse:
    """A field holding one object of ``shape``."""
    return lambda value, where, settings: canonical(value, shape, where, settings)


def list_of(shape: Struct, nullable: bool = False) -> Parse:
    """A field holding a list of objects of ``shape`` (null: not set, when ``nullable``)."""

    def parse(value: Any, where: str, settings: Settings) -> Any:
        if value is None and nullable:
            return OMIT
        if not isinstance(value, list):
            raise InvalidField(where, "must be a list")
        return [canonical(item, shape, f"{where}[{i}]", settings) for i, item in enumerate(value)]

    return parse
