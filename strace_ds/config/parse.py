"""From files, mappings and flags to section fields: flat, dotted and nested keys, typed.

``_nest`` places every key of a mapping in its section (``lr``, ``optim.lr`` and
``optim: {lr: ...}`` are one field) and type-checks the values (``_coerce``); the CLI's casters
and the one-line YAML/UTF-8 error texts live here too.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import yaml

from strace_ds.config.fields import _base_type, _hints
from strace_ds.config.sections import FIELD_SECTIONS, SECTIONS


def _nest(data: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """Flat, dotted and nested keys -> ``{section: {field: value}}``, values type-checked.

    Unknown keys are reported all at once (per section for nested ones); a field given twice
    in one mapping (``lr`` and ``optim: {lr: ...}``) is an error.
    """
    placed: dict[str, tuple[str, str, Any]] = {}  # field -> (section, as spelled, value)
    unknown: dict[str | None, list[str]] = {}

    def place(section: str, key: Any, value: Any, spelled: str) -> None:
        name = str(key)
        if FIELD_SECTIONS.get(name) != section:
            unknown.setdefault(section, []).append(name)
        elif name in placed:
            raise ValueError(
                f"{name} is given twice, as {placed[name][1]!r} and {spelled!r}; keep one"
            )
        else:
            placed[name] = (section, spelled, value)

    for key, value in data.items():
        text = str(key)  # YAML keys may be numbers
        head, _, tail = text.partition(".")
        if text in SECTIONS:
            if value is None:  # ``optim:`` with nothing under it
                continue
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"{text} is a config section: give it a mapping of {SECTIONS[text].__name__} "
                    f"fields (field: value), got {value!r}"
                )
            for sub, sub_value in value.items():
                place(text, sub, sub_value, f"{text}.{sub}")
        elif tail and head in SECTIONS:
            place(head, tail, value, text)
        elif text in FIELD_SECTIONS:
            place(FIELD_SECTIONS[text], text, value, text)
        else:
            unknown.setdefault(None, []).append(text)
    if unknown:
        raise _unknown_fields(unknown)
    nested: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name, (section, _, value) in placed.items():
        nested[section][name] = _coerce(name, value)
    return nested


def _unknown_fields(unknown: Mapping[str | None, list[str]]) -> ValueError:
    """One message for every unknown key: the valid names of its scope, and where it belongs."""
    parts = []
    for section, names in unknown.items():
        shown = sorted(names) if section is None else [f"{section}.{n}" for n in sorted(names)]
        valid = (
            f"valid fields: {', '.join(sorted(FIELD_SECTIONS))} (flat, or nested under the "
            f"sections {', '.join(SECTIONS)})"
            if section is None
            else f"valid {section} fields: "
            + ", ".join(sorted(n for n, s in FIELD_SECTIONS.items() if s == section))
        )
        moved = [
            f"{n} belongs to {FIELD_SECTIONS[n]}" for n in sorted(names) if n in FIELD_SECTIONS
        ]
        parts.append(
            f"unknown config field(s) {', '.join(shown)}; {valid}"
            + (f" ({'; '.join(moved)})" if moved else "")
        )
    return ValueError(". ".join(parts))


_METAVARS = {int: "INT", float: "FLOAT", str: "STR"}


def _bad_byte(raw: bytes, exc: UnicodeDecodeError) -> str:
    """Where a UTF-8 decode failed, as an editor shows it: byte, line, column."""
    line = raw.count(b"\n", 0, exc.start) + 1
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    return (
        f"byte 0x{raw[exc.start]:02x} on line {line}, column {column} is not valid UTF-8; "
        "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _yaml_error(exc: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: position (1-based) and the parser's reason."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    reason = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if mark is None or reason is None:
        return "invalid YAML: " + " ".join(str(exc).split())
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {reason}"


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _cli_caster(name: str, base: type) -> Any:
    def cast(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--{name} expects {base.__name__}, got {text!r}"
            ) from None

    return cast


def _coerce(name: str, value: Any) -> Any:
    """Type-check a file/dict value against the field's annotation, naming the field."""
    base = _base_type(_hints(SECTIONS[FIELD_SECTIONS[name]])[name])
    if value is None:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 1e-4 and 5E3 as strings: a float field takes them as numbers.
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if base is bool and not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if base is float and not isinstance(value, float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if base is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value
