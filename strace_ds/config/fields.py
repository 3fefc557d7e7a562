"""How a config field is declared and checked: ``_f``, the section base class, the type checks.

The building blocks of :mod:`strace_ds.config.sections`: a field carries its default, its
one-line help (also the CLI's) and options for the checks; every section checks its fields'
types from their annotations before its own rules run.
"""

from __future__ import annotations

import functools
import math
import os
import re
import types
import typing
from dataclasses import MISSING, Field, asdict, field, fields
from typing import Any


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A config field: its default, its one-line ``help`` and options for the checks.

    ``allow_inf=True``: a float field where infinity is meaningful; ``shown_default``: what
    ``--help`` prints as the default instead of the value.
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help, **kw})


def _base_type(hint: Any) -> type:
    """``X`` of a resolved annotation ``X`` or ``X | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _is_optional(hint: Any) -> bool:
    """True when a resolved annotation admits None (``X | None``)."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return union and type(None) in typing.get_args(hint)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config class (its fields' types, inherited ones included)."""
    return typing.get_type_hints(cls)


class _Section:
    """Base of the config sections: checks from the annotations, then the section's own rules.

    A section validates itself when built and on :meth:`validate` (after edits); rules that tie
    two sections together are :class:`TrainConfig`'s.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field of this section."""
        _validate_field_types(self)
        self._check()

    def _check(self) -> None:
        """The section's own rules, run after the type checks (fields are typed by then)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _at_least(section: Any, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(section, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(section, name)}")


def _validate_field_types(section: Any) -> None:
    """Checks every field gets from its annotation (new fields and sections included).

    A field whose type has no ``| None`` must not be null (YAML ``steps: null``). A float
    field must hold a real, finite number: NaN and infinity make no sense as a rate, width,
    temperature or timeout (``reward_timeout_s: inf`` would never kill a hung grader). A
    field where infinity is meaningful opts out with ``_f(..., allow_inf=True)``.
    """
    hints = _hints(type(section))
    for f in fields(section):
        value = getattr(section, f.name)
        base = _base_type(hints[f.name])
        if value is None:
            if not _is_optional(hints[f.name]):
                raise ValueError(
                    f"{f.name} must not be null; give {_TYPE_WORDS.get(base, base.__name__)} "
                    f"or leave it out for the default ({_default(f)!r})"
                )
        elif base is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if math.isnan(value) or (math.isinf(value) and not f.metadata.get("allow_inf")):
                raise ValueError(f"{f.name} must be a finite number, got {value}")


def _default(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def _first_line(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}

# A hub repo id: ``name`` or ``namespace/name`` (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _looks_like_path(value: str) -> bool:
    """``--model`` meant as a local path (./x, ../x, ~/x, /x, a/b/c), not a hub id (org/name)."""
    if value.startswith((".", "~")) or os.path.isabs(value) or value.startswith("/"):
        return True
    if os.sep in value or (os.altsep and os.altsep in value) or "/" in value:
        return not _HUB_ID.fullmatch(value)
    return False
