"""The fields of a benchmark's or a user's rows, checked where a loader reads them: a field that
is missing or of another type is one :class:`~probes.errors.UserError` sentence naming the
field and the row, never a ``KeyError`` or ``TypeError`` from deep inside a loader.

>>> text({"question": "why?"}, "question", "row 0 of q.json")
'why?'
>>> numbers([1, 2, "3", 4], "bbox", "row 2 of refcoco val", count=4)
(1.0, 2.0, 3.0, 4.0)
>>> text({}, "question", "row 0 of q.json")
Traceback (most recent call last):
...
probes.errors.UserError: row 0 of q.json has no field 'question'.
>>> number({"number": "many"}, "number", "row 1 of countbench test")
Traceback (most recent call last):
...
probes.errors.UserError: the field 'number' of row 1 of countbench test is 'many', not a number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from probes.errors import UserError

_MISSING = object()


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else f"{shown[:37]}..."


def field(row: Any, name: str, where: str, default: Any = _MISSING) -> Any:
    """``row[name]`` (``row`` a mapping); ``default`` when it is missing or None, else
    UserError naming the field."""
    if not isinstance(row, Mapping):
        raise UserError(f"{where} is {type(row).__name__}, not an object with fields.")
    value = row.get(name)
    if value is None:
        if default is _MISSING:
            raise UserError(f"{where} has no field {name!r}.")
        return default
    return value


def text(row: Any, name: str, where: str, default: Any = _MISSING) -> str:
    """The field as text (a number is written as text)."""
    value = field(row, name, where, default)
    if isinstance(value, str) or value is default:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise UserError(f"the field {name!r} of {where} is {_shown(value)}, not text.")


def _number(value: Any, name: str, where: str) -> float:
    try:
        number = float(value) if not isinstance(value, (bool, list, dict)) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise UserError(f"the field {name!r} of {where} is {_shown(value)}, not a number.")
    return number


def number(row: Any, name: str, where: str) -> float:
    """The field as a finite number (a number written as text counts)."""
    return _number(field(row, name, where), name, where)


def numbers(value: Any, name: str, where: str, count: int | None = None) -> tuple[float, ...]:
    """``value`` (the field ``name`` of ``where``) as finite numbers, ``count`` of them."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        if not hasattr(value, "tolist"):
            raise UserError(f"the field {name!r} of {where} is {_shown(value)}, not a list of "
                            "numbers.")
        value = value.tolist()
    found = tuple(_number(v, name, where) for v in value)
    if count is not None and len(found) != count:
        raise UserError(f"the field {name!r} of {where} holds {len(found)} numbers, not {count}.")
    return found


def texts(value: Any, name: str, where: str) -> tuple[str, ...]:
    """``value`` (the field ``name`` of ``where``) as a tuple of texts (one text: a 1-tuple)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        return tuple(text({name: item}, name, where) for item in items)
    raise UserError(f"the field {name!r} of {where} is {_shown(value)}, not a list of texts.")


__all__ = ["field", "number", "numbers", "text", "texts"]
