"""TrainConfig: a run's sections together, read flat or nested, from flags, files or code."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from strace_ds.config.fields import (
    _base_type,
    _default,
    _first_line,
    _hints,
    _Section,
)
from strace_ds.config.parse import (
    _METAVARS,
    _bad_byte,
    _cli_caster,
    _nest,
    _parse_bool,
    _unknown_fields,
    _yaml_error,
)
from strace_ds.config.sections import (
    FIELD_SECTIONS,
    SECTIONS,
    DataConfig,
    EvalConfig,
    ObjectiveConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
)
from strace_ds.losses import TraceConfig
from strace_ds.rollout import SamplingParams
from strace_ds.train.layout import BatchLayout


@dataclass(init=False)
class TrainConfig:
    """Everything a run needs. Defaults train the embedded tiny policy on the synthetic task.

    Built from sections (``TrainConfig(optim=OptimConfig(lr=1e-4))``, or a mapping of the
    section's fields), from flat field names (``TrainConfig(lr=1e-4)``), or both (flat names
    override the sections given). Every section field also reads and writes flat:
    ``cfg.lr is cfg.optim.lr``; call :meth:`validate` after edits.
    """

    data: DataConfig
    eval: EvalConfig
    rollouts: RolloutConfig
    objective: ObjectiveConfig
    optim: OptimConfig
    rewards: RewardConfig
    run: RunConfig

    def __init__(self, **kwargs: Any) -> None:
        given: dict[str, Any] = {}
        flat: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in kwargs.items():
            if key in SECTIONS:
                given[key] = value
            elif key in FIELD_SECTIONS:
                flat[FIELD_SECTIONS[key]][key] = value
            else:
                raise TypeError(
                    f"TrainConfig() got an unexpected keyword argument {key!r}; fields are "
                    f"{', '.join(FIELD_SECTIONS)}, sections {', '.join(SECTIONS)}"
                )
        for name, cls in SECTIONS.items():
            setattr(self, name, _build_section(name, cls, given.get(name), flat[name]))
        self._check_across()

    # --- derived ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.run_name or f"{self.loss}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def trace_config(self) -> TraceConfig:
        """The loss preset with this run's overrides applied."""
        return self.objective.trace_config()

    def sampling_params(self, seed: int | None = None) -> SamplingParams:
        """The rollouts' sampling parameters for one generate call."""
        return self.rollouts.sampling_params(seed)

    def eval_sampling_params(self, seed: int | None = None) -> SamplingParams:
        """Sampling of the held-out evaluation: the rollouts' answer cap at
        ``eval_temperature``, no nucleus cut."""
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.eval_temperature, seed=seed
        )

    def to_dict(self, nested: bool = False) -> dict[str, Any]:
        """Flat ``{field: value}`` (default), or ``{section: {field: value}}`` with ``nested``.

        Either form goes back through :meth:`from_dict` (and a YAML/JSON file) unchanged.
        """
        if nested:
            return {name: asdict(getattr(self, name)) for name in SECTIONS}
        return {name: getattr(self, name) for name in FIELD_SECTIONS}

    # --- validation -------------------------------------------------------------------------
    def validate(self, world_size: int | None = None) -> None:
        """Raise ``ValueError`` naming the first bad field; ``world_size`` adds divisibility."""
        for name in SECTIONS:
            getattr(self, name).validate()
        self._check_across()
        if world_size is not None:
            self._validate_sizes(world_size)

    def _check_across(self) -> None:
        """Rules that tie two sections together (each section has checked its own)."""
        if self.group_size < 2 and self.advantage in ("grpo", "rloo"):
            raise ValueError(
                f"group_size must be >= 2 for advantage={self.advantage!r} (a group needs a "
                f"baseline), got {self.group_size}"
            )
        if self.overlong == "soft" and self.overlong_buffer >= self.max_new_tokens:
            raise ValueError(
                f"overlong_buffer ({self.overlong_buffer}) must be < max_new_tokens "
                f"({self.max_new_tokens})"
            )

    def _validate_sizes(self, world_size: int) -> None:
        self.layout(world_size).check()

    def layout(self, world_size: int) -> BatchLayout:
        """The step's batch geometry on ``world_size`` ranks."""
        return BatchLayout.of(self.rollouts, self.optim, world_size)

    def micro_batches_per_update(self, world_size: int) -> tuple[int, int]:
        """``(rows per micro-batch, micro-batches per optimizer update)`` on each rank."""
        layout = self.layout(world_size)
        return layout.micro, layout.accumulation

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML or JSON file (flat field names, sections, or both), then ``overrides``."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        where = f"config file {str(path)!r}"
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{where} cannot be read: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where} is not UTF-8 text: {_bad_byte(raw, exc)}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{where}: {_yaml_error(exc)}") from None
        if data is None:
            raise ValueError(f"{where} is empty; write one 'field: value' per line (see --help)")
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of field: value")
        file_values, given = _nest(data), _nest(overrides)
        return cls(**{name: {**file_values[name], **given[name]} for name in SECTIONS})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from ``{field: value}``, ``{section: {field: value}}``, ``{"section.field":
        value}`` or a mix; values are type-checked against the fields' annotations."""
        return cls(**_nest(data))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--flag`` per field, grouped by section in ``--help``.

        ``--field_name``, ``--field-name`` and ``--section.field_name`` (also
        ``--section.field-name``, not listed) are the same flag; the last one given wins.
        """
        for section, section_cls in SECTIONS.items():
            group = parser.add_argument_group(
                section,
                f"{_first_line(section_cls)}\nIn a config file: '{section}:' (or flat); "
                f"flags also as --{section}.FIELD.",
            )
            for f in fields(section_cls):  # type: ignore[arg-type]
                dashed = f.name.replace("_", "-")
                flags = [f"--{f.name}"] + ([f"--{dashed}"] if dashed != f.name else [])
                flags.append(f"--{section}.{f.name}")
                base = _base_type(_hints(section_cls)[f.name])
                kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
                if base is bool:
                    kwargs.update(type=_parse_bool, metavar="true|false")
                else:
                    kwargs.update(type=_cli_caster(f.name, base), metavar=_METAVARS[base])
                shown = f.metadata.get("shown_default", _default(f))
                group.add_argument(
                    *flags, **kwargs, help=f"{f.metadata.get('help', '')} (default: {shown})"
                )
                if dashed != f.name:  # accepted, not listed: --help stays one line per flag
                    group.add_argument(f"--{section}.{dashed}", **kwargs, help=argparse.SUPPRESS)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """Build from parsed CLI args: ``--config FILE`` first, then the flags given."""
        given = {name: getattr(args, name) for name in FIELD_SECTIONS if hasattr(args, name)}
        if getattr(args, "config", None):
            return cls.from_file(args.config, **given)
        return cls.from_dict(given)


def _flat_property(section: str, name: str, doc: str) -> property:
    def get(self: TrainConfig) -> Any:
        return getattr(getattr(self, section), name)

    def set_(self: TrainConfig, value: Any) -> None:
        setattr(getattr(self, section), name, value)

    return property(get, set_, doc=f"``{section}.{name}``: {doc}")


for _name, _section in FIELD_SECTIONS.items():
    _field = next(f for f in fields(SECTIONS[_section]) if f.name == _name)  # type: ignore[arg-type]
    setattr(TrainConfig, _name, _flat_property(_section, _name, _field.metadata.get("help", "")))
del _name, _section, _field


def _build_section(name: str, cls: type[_Section], given: Any, flat: dict[str, Any]) -> Any:
    """One section of a TrainConfig: a copy of ``given`` (instance or mapping) with ``flat``."""
    if given is None:
        return cls(**flat)
    if isinstance(given, cls):
        return replace(given, **flat)  # a copy (never shared between configs), validated
    if isinstance(given, Mapping):
        unknown = {str(k) for k in given} - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise _unknown_fields({name: sorted(unknown)})
        return cls(**{**given, **flat})
    raise ValueError(
        f"{name} must be an instance of {cls.__name__} or a mapping of its fields (field: value), "
        f"got {given!r}"
    )
