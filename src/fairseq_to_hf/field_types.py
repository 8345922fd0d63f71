"""Type checks of option dataclasses from their annotations, so a Python caller's mistake is refused at once.

The command line's values are typed by argparse; a caller of `convert()` may pass anything, and a
string where a number goes would otherwise fail deep inside the work, after files were read.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from pathlib import Path
from typing import Any

from .errors import ConversionError, ProblemList

_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "True or False", type(None): "None",
          Path: "a path", dict: "a dict", list: "a list"}


def refuse_wrong_types(instance: Any) -> None:
    """Raises ConversionError naming every field of the dataclass `instance` whose value its annotation rules out."""
    hints = typing.get_type_hints(type(instance))
    problems = ProblemList()
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        hint = hints[field.name]
        if not matches(value, hint):
            kind = type(value)
            named = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
            problems.add(f"{field.name} must be {_describe(hint)}, not {value!r:.60} ({named})")
    problems.raise_if_any(ConversionError, f"{type(instance).__name__}: wrong type")


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` is of the annotation `hint` (unions, dict[...] and list[...] of the plain types)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, option) for option in typing.get_args(hint))
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return isinstance(value, dict) and all(matches(k, key_hint) and matches(v, value_hint)
                                               for k, v in value.items())
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(matches(item, item_hint) for item in value)
    if hint is Path:  # a str path: bytes paths are refused by pathlib
        return isinstance(value, os.PathLike) and isinstance(os.fspath(value), str)
    if hint in (int, float):  # a bool is an int to Python, never a count or a tolerance here
        return isinstance(value, numbers.Real if hint is float else numbers.Integral) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    if dataclasses.is_dataclass(hint) or isinstance(hint, type):
        return isinstance(value, hint)
    return True  # Any and other forms: not checked


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if origin is list:
        return f"a list of ({_describe(typing.get_args(hint)[0])})"
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return f"a dict from ({_describe(key_hint)}) to ({_describe(value_hint)})"
    return _NAMES.get(hint, f"a {getattr(hint, '__name__', hint)}")
