"""The named run configs under configs/: they load, validate and say what they claim."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from strace_ds.config import TrainConfig
from strace_ds.config.reference import reference_yaml

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"


def _from_flags(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    TrainConfig.add_arguments(parser)
    return TrainConfig.from_args(parser.parse_args(argv))


def test_every_config_loads_and_validates():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == ["credit_study.yaml", "qwen3_1p7b_math.yaml", "qwen3_8b_lora.yaml",
                     "reference.yaml", "tiny_default.yaml"]  # fmt: skip
    for path in CONFIGS.glob("*.yaml"):
        TrainConfig.from_file(path).validate(world_size=1)


def test_tiny_default_is_the_main_job():
    # `deepspeed scripts/train.py --ds_config ds_configs/zero3.json` is every default
    assert TrainConfig.from_file(CONFIGS / "tiny_default.yaml").to_dict() == TrainConfig().to_dict()


def test_reference_is_current_and_holds_every_default():
    text = (CONFIGS / "reference.yaml").read_text()
    assert text == reference_yaml(), (
        "configs/reference.yaml is stale: python -m strace_ds.config.reference > "
        "configs/reference.yaml"
    )
    assert TrainConfig.from_file(CONFIGS / "reference.yaml").to_dict() == TrainConfig().to_dict()
    for name in TrainConfig().to_dict():
        assert re.search(rf"^  {name}: ", text, re.M), name


def test_qwen3_recipe_is_the_documented_gpu_command():
    block = (REPO / "docs" / "TRAINING.md").read_text().split("# a real model and dataset")[1]
    command = block.split("```")[0].replace("\\\n", " ")
    argv = shlex.split(command)
    argv = argv[argv.index("scripts/train.py") + 1 :]
    documented = _from_flags(argv)
    recipe = TrainConfig.from_file(CONFIGS / "qwen3_1p7b_math.yaml")
    assert recipe.to_dict() == documented.to_dict()
    recipe.validate(world_size=8)  # what `deepspeed --num_gpus 8` checks at start-up
    assert (recipe.model, recipe.max_new_tokens, recipe.eval_k) == ("Qwen/Qwen3-1.7B", 4096, 16)
    # the SGLang variant in its header is valid too
    _from_flags(["--config", str(CONFIGS / "qwen3_1p7b_math.yaml"), "--rollout", "sglang",
                 "--sglang_url", "http://127.0.0.1:30000"]).validate(world_size=8)  # fmt: skip


def test_qwen3_lora_recipe_trains_adapters_on_two_ranks():
    recipe = TrainConfig.from_file(CONFIGS / "qwen3_8b_lora.yaml")
    recipe.validate(world_size=2)  # what `deepspeed --num_gpus 2` checks at start-up
    assert (recipe.model, recipe.lora_rank, recipe.lora_alpha) == ("Qwen/Qwen3-8B", 64, 128.0)
    assert recipe.lora_target_modules == "all-linear" and recipe.export_merged
    header = (CONFIGS / "qwen3_8b_lora.yaml").read_text().split("\ndata:")[0]
    assert "deepspeed --num_gpus 2 scripts/train.py --config configs/qwen3_8b_lora.yaml" in header
