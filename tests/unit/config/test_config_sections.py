"""TrainConfig as per-component sections: nested files, dotted flags, flat compatibility."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import pickle
import sys
import typing
from pathlib import Path

import pytest
import yaml

from strace_ds.config import (
    FIELD_SECTIONS,
    SECTIONS,
    TRACE_OVERRIDES,
    ObjectiveConfig,
    OptimConfig,
    RolloutConfig,
    TrainConfig,
)
from strace_ds.losses import TraceConfig
from strace_ds.rollout import SamplingParams

TRAIN = Path(__file__).resolve().parents[3] / "scripts" / "train.py"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    TrainConfig.add_arguments(parser)
    return parser


def _parse(argv: list[str]) -> TrainConfig:
    return TrainConfig.from_args(_parser().parse_args(argv))


def _train_module():
    spec = importlib.util.spec_from_file_location("_train_cli_sections", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# ----------------------------------------------------------------------------- sections
def test_sections_own_their_fields_and_read_flat():
    cfg = TrainConfig(lr=1e-4, group_size=4, loss="grpo", seed=3)
    assert isinstance(cfg.optim, OptimConfig) and isinstance(cfg.rollouts, RolloutConfig)
    assert (cfg.optim.lr, cfg.rollouts.group_size, cfg.objective.loss, cfg.run.seed) == (
        1e-4, 4, "grpo", 3,
    )
    assert (cfg.lr, cfg.group_size, cfg.loss, cfg.seed) == (1e-4, 4, "grpo", 3)
    assert cfg.name == "grpo-seed3"
    # every field lives in exactly one section, under its own name
    for name, section in FIELD_SECTIONS.items():
        assert getattr(cfg, name) == getattr(getattr(cfg, section), name)
    assert list(SECTIONS) == ["data", "eval", "rollouts", "objective", "optim", "rewards", "run"]
    # writes go through to the section; validate() re-checks after edits
    cfg.lr = 0.5
    assert cfg.optim.lr == 0.5
    cfg.optim.lr = 0.0
    with pytest.raises(ValueError, match="lr must be > 0"):
        cfg.validate()


def test_a_section_validates_itself():
    with pytest.raises(ValueError, match="lr must be > 0"):
        OptimConfig(lr=0)
    with pytest.raises(ValueError, match="steps must not be null"):
        OptimConfig(steps=None)
    with pytest.raises(ValueError, match="top_p must be a finite number"):
        RolloutConfig(top_p=math.nan)
    assert ObjectiveConfig(loss="gspo").trace_config() == TraceConfig.preset("gspo")


def test_flat_kwargs_equal_nested_construction():
    flat = TrainConfig(lr=1e-4, steps=5, group_size=4, loss="p_trace", lam=0.5, reward_workers=1)
    nested = TrainConfig(
        optim=OptimConfig(lr=1e-4, steps=5),
        rollouts={"group_size": 4},
        objective=ObjectiveConfig(loss="p_trace", lam=0.5),
        rewards={"reward_workers": 1},
    )
    assert flat == nested
    # flat names override the sections given; the given section is copied, never shared
    given = OptimConfig(lr=1e-4, steps=5)
    cfg = TrainConfig(optim=given, steps=9)
    assert (cfg.lr, cfg.steps, given.steps) == (1e-4, 9, 5)
    cfg.lr = 0.1
    assert given.lr == 1e-4
    other = dataclasses.replace(cfg, lr=0.2)
    assert (other.lr, cfg.lr, other.steps) == (0.2, 0.1, 9)
    other.steps = 3
    assert cfg.steps == 9
    with pytest.raises(TypeError, match="stepz"):
        TrainConfig(stepz=3)
    with pytest.raises(ValueError, match="optim must be an instance of OptimConfig or a mapping"):
        TrainConfig(optim=3)
    with pytest.raises(ValueError, match=r"optim\.lrr"):
        TrainConfig(optim={"lrr": 1})


def test_to_dict_round_trips_flat_and_nested(tmp_path):
    cfg = TrainConfig(lr=1e-4, loss="grpo", log_ratio_clamp=10.0, eval_k=2, stop_after=4)
    flat = cfg.to_dict()
    assert list(flat) == list(FIELD_SECTIONS)  # flat, as before: every field, by its name
    assert flat["lr"] == 1e-4 and flat["log_ratio_clamp"] == 10.0
    nested = cfg.to_dict(nested=True)
    assert set(nested) == set(SECTIONS) and nested["optim"]["lr"] == 1e-4
    assert TrainConfig.from_dict(flat) == cfg
    assert TrainConfig.from_dict(nested) == cfg
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(nested))
    assert TrainConfig.from_file(path) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg


# ----------------------------------------------------------------------------- files
def test_nested_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "objective:\n  loss: grpo\n  lam: 0.5\n"
        "optim:\n  lr: 1e-4\n  steps: 7\n"  # 1e-4: a string to PyYAML, a float here
        "rollouts:\n  group_size: 4\n  prompts_per_step: 8\n"
        "run: {seed: 2}\n"
        "eval:\n"  # an empty section is fine
    )
    cfg = TrainConfig.from_file(path)
    assert cfg == TrainConfig(loss="grpo", lam=0.5, lr=1e-4, steps=7, group_size=4,
                              prompts_per_step=8, seed=2)
    assert cfg.trace_config() == TraceConfig.preset("grpo", lam=0.5)
    jpath = tmp_path / "run.json"
    jpath.write_text(json.dumps({"objective": {"loss": "gspo"}, "optim": {"steps": 3}}))
    assert TrainConfig.from_file(jpath).trace_config().window == "sequence"


def test_mixed_flat_nested_and_dotted_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss: grpo\noptim:\n  lr: 0.01\nrollouts.group_size: 4\nsteps: 3\n")
    cfg = TrainConfig.from_file(path, mini_batches=1)
    assert (cfg.loss, cfg.lr, cfg.group_size, cfg.steps, cfg.mini_batches) == (
        "grpo", 0.01, 4, 3, 1,
    )
    # overrides (CLI flags) win over the file, whichever form either uses
    assert TrainConfig.from_file(path, lr=0.02).lr == 0.02
    assert TrainConfig.from_file(path, optim={"lr": 0.03}).lr == 0.03
    # one file giving a field twice is ambiguous
    path.write_text("lr: 0.01\noptim:\n  lr: 0.02\n")
    with pytest.raises(ValueError, match=r"lr is given twice, as 'lr' and 'optim\.lr'"):
        TrainConfig.from_file(path)
    # values are type-checked per section too, naming the field
    path.write_text("optim:\n  steps: three\n")
    with pytest.raises(ValueError, match="steps must be an integer"):
        TrainConfig.from_file(path)


def test_unknown_nested_key_names_the_section_and_its_fields(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) optim\.lrr") as exc:
        TrainConfig.from_file(path)
    msg = str(exc.value)
    assert "valid optim fields: " in msg and "lr, lr_schedule" in msg
    assert "group_size" not in msg  # only the section's own fields
    # a field under the wrong section says where it belongs
    path.write_text("optim:\n  group_size: 4\n")
    with pytest.raises(ValueError, match="group_size belongs to rollouts"):
        TrainConfig.from_file(path)
    with pytest.raises(ValueError, match=r"unknown config field\(s\) optim\.x"):
        TrainConfig.from_dict({"optim.x": 1})
    # top level: the flat field names (and the sections) are listed, as before
    with pytest.raises(ValueError, match=r"unknown config field\(s\) stepz; valid fields: .*lr"):
        TrainConfig.from_dict({"stepz": 3})
    path.write_text("optim: 3\n")
    with pytest.raises(ValueError, match="optim is a config section: give it a mapping"):
        TrainConfig.from_file(path)


# ----------------------------------------------------------------------------- CLI
def test_dotted_flags_are_the_flat_flags():
    cfg = _parse(["--optim.lr", "0.01", "--rollouts.prompts-per-step", "4",
                  "--rollouts.group_size", "2", "--objective.loss", "grpo", "--mini-batches", "1"])
    assert cfg == TrainConfig(lr=0.01, prompts_per_step=4, group_size=2, loss="grpo",
                              mini_batches=1)
    # the same flag under two spellings: the last one wins, as with any repeated flag
    assert _parse(["--lr", "0.1", "--optim.lr", "0.2"]).lr == 0.2
    assert _parse(["--optim.lr", "0.2", "--lr", "0.1"]).lr == 0.1


def test_file_nested_then_dotted_flag_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.01\n  steps: 7\n")
    cfg = _parse(["--config", str(path), "--optim.steps", "9"])
    assert (cfg.lr, cfg.steps) == (0.01, 9)


def test_trace_overrides_come_from_trace_config():
    assert TraceConfig.field_names() == TRACE_OVERRIDES
    for name in TRACE_OVERRIDES:
        assert FIELD_SECTIONS[name] == "objective"
    # The overrides are written out in ObjectiveConfig, right after ``loss``, one per
    # TraceConfig field in its order and of its type (optional): a new TraceConfig field
    # without its override fails here.
    names = [f.name for f in dataclasses.fields(ObjectiveConfig)]
    assert tuple(names[1 : 1 + len(TRACE_OVERRIDES)]) == TRACE_OVERRIDES
    trace_types = typing.get_type_hints(TraceConfig)
    objective_types = typing.get_type_hints(ObjectiveConfig)
    for name in TRACE_OVERRIDES:
        assert objective_types[name] == trace_types[name] | None, name
        assert ObjectiveConfig.__dataclass_fields__[name].default is None
    assert TrainConfig().trace_config() == TraceConfig.preset("s_trace")
    cfg = _parse(["--loss", "grpo", "--loss_on_selected_only", "true", "--log_ratio_clamp", "5"])
    assert (cfg.loss_on_selected_only, cfg.log_ratio_clamp) == (True, 5.0)
    assert cfg.trace_config() == TraceConfig.preset(
        "grpo", loss_on_selected_only=True, log_ratio_clamp=5.0
    )
    assert cfg.trace_config() != TraceConfig.preset("grpo")
    on = TrainConfig(loss="highent_grpo", loss_on_selected_only=False).trace_config()
    assert on.loss_on_selected_only is False and on.entropy_top_quantile == 0.2
    assert TrainConfig(window="sequence", form="ratio").trace_config().window == "sequence"
    with pytest.raises(ValueError, match="log_ratio_clamp must be > 0"):
        TrainConfig(log_ratio_clamp=0.0)
    with pytest.raises(ValueError, match="log_ratio_clamp must be a finite number"):
        TrainConfig(log_ratio_clamp=math.inf)
    with pytest.raises(ValueError, match="window must be one of causal, sequence"):
        TrainConfig(window="forward")
    with pytest.raises(ValueError, match="loss_on_selected_only must be true or false"):
        TrainConfig.from_dict({"objective": {"loss_on_selected_only": "yes"}})
    assert TrainConfig(behaviour_cap=math.inf).behaviour_cap == math.inf  # allow_inf kept


def test_sampling_params():
    cfg = TrainConfig(max_new_tokens=12, temperature=0.7, top_p=0.9)
    assert cfg.sampling_params(seed=5) == SamplingParams(
        max_new_tokens=12, temperature=0.7, top_p=0.9, seed=5
    )


def test_help_groups_flags_by_section():
    text = _parser().format_help()
    starts = [text.index(f"\n{name}:\n") for name in SECTIONS]
    assert starts == sorted(starts)  # one group per section, in order
    bounds = dict(zip(SECTIONS, [*starts[1:], len(text)]))
    for name, section in FIELD_SECTIONS.items():
        at = text.index(f"  --{name} ")
        assert starts[list(SECTIONS).index(section)] < at < bounds[section], name
        assert f"--{section}.{name} " in text
    assert "peak learning rate (AdamW) (default: 0.0002)" in " ".join(text.split())
    assert "override the preset's log_ratio_clamp: Bound on |ell|" in " ".join(text.split())


def test_train_cli_dotted_flag_error_is_one_line(capsys):
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exc:
        mp.setattr(sys, "argv", [str(TRAIN)])
        _train_module().parse_args(["--optim.lr", "0"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["train.py: error: lr must be > 0, got 0.0"]
    cfg = _train_module().parse_args(["--optim.lr", "0.001", "--objective.log_ratio_clamp", "8"])
    assert (cfg.lr, cfg.trace_config().log_ratio_clamp) == (0.001, 8.0)


def test_off_policy_fields_load_from_yaml(tmp_path) -> None:
    """The issue-10 knobs from a nested YAML file, and flat, and as flags."""
    import argparse

    path = tmp_path / "async.yaml"
    path.write_text("rollouts: {max_staleness: 1}\noptim: {epochs: 2}\n"
                    "objective: {behaviour_correction: trace, behaviour_cap: inf,\n"
                    "            behaviour_mode: mask, old_logprobs: rollout}\n")
    cfg = TrainConfig.from_file(path)
    assert (cfg.max_staleness, cfg.epochs, cfg.behaviour_correction) == (1, 2, "trace")
    assert cfg.behaviour_cap == float("inf") and cfg.behaviour_mode == "mask"
    assert cfg.old_logprobs == "rollout" and cfg.rollouts.max_staleness == 1
    flat = tmp_path / "flat.yaml"
    flat.write_text("max_staleness: 2\nbehaviour_correction: token\n")
    assert TrainConfig.from_file(flat).max_staleness == 2
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    args = parser.parse_args(
        ["--max_staleness", "1", "--objective.behaviour_correction", "sequence"]
    )
    got = TrainConfig.from_args(args)
    assert got.max_staleness == 1 and got.behaviour_correction == "sequence"
