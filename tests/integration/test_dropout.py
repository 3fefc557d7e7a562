"""Dropout is off in the RL policy: train-mode updates and eval-mode scoring are one policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

from strace_ds.config import TrainConfig
from strace_ds.train.dropout import describe, disable_dropout, disable_dropout_modules

REPO = Path(__file__).resolve().parents[2]
IDS = torch.tensor([[1, 5, 7, 9, 11, 13, 15, 17], [1, 6, 8, 10, 12, 14, 16, 18]])


@pytest.fixture()
def dropout_policy(tiny_policy, tmp_path):
    """The tiny Qwen3 policy with ``attention_dropout = 0.1`` in its config."""
    path = tmp_path / "policy"
    shutil.copytree(tiny_policy, path)
    config = json.loads((path / "config.json").read_text())
    config["attention_dropout"] = 0.1
    (path / "config.json").write_text(json.dumps(config))
    return path


def _logprobs(model, train: bool) -> torch.Tensor:
    model.train(train)
    torch.manual_seed(0)
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=IDS).logits.float(), dim=-1)


def test_every_dropout_probability_goes_to_zero(dropout_policy):
    config = AutoConfig.from_pretrained(dropout_policy)
    assert disable_dropout(config) == {"attention_dropout": 0.1}
    assert config.attention_dropout == 0.0
    assert disable_dropout(config) == {}  # nothing left; nothing announced
    gpt2 = GPT2Config(resid_pdrop=0.2)
    changed = disable_dropout(gpt2)
    assert changed["resid_pdrop"] == 0.2 and {"embd_pdrop", "attn_pdrop"} <= set(changed)
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == gpt2.attn_pdrop == 0.0
    assert gpt2.summary_first_dropout == 0.0
    assert describe({}) is None
    assert "attention_dropout 0.1 -> 0" in describe({"attention_dropout": 0.1})
    layer = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.3))
    assert disable_dropout_modules(layer) == {"1": 0.3} and layer[1].p == 0.0


def test_without_dropout_train_and_eval_log_probs_are_identical(dropout_policy):
    raw = AutoModelForCausalLM.from_pretrained(dropout_policy)
    assert not torch.equal(_logprobs(raw, True), _logprobs(raw, False)), "dropout is not active"
    config = AutoConfig.from_pretrained(dropout_policy)
    disable_dropout(config)
    model = AutoModelForCausalLM.from_pretrained(dropout_policy, config=config)
    assert torch.equal(_logprobs(model, True), _logprobs(model, False))


def test_the_trainer_engine_has_dropout_off(dropout_policy):
    from strace_ds.distributed import init_distributed
    from strace_ds.train.setup import build_policy_engine

    init_distributed()
    cfg = TrainConfig(
        prompts_per_step=2,
        group_size=2,
        mini_batches=2,
        micro_batch_size=2,
        ds_config=str(REPO / "ds_configs" / "zero3.json"),
    )
    logged: list[str] = []
    engine = build_policy_engine(
        cfg.optim, cfg.ds_config, cfg.layout(1), str(dropout_policy), log=logged.append
    ).engine
    assert engine.module.config.attention_dropout == 0.0
    assert [line for line in logged if line.startswith("dropout: disabled")]
    assert torch.equal(_logprobs(engine, True), _logprobs(engine, False))
