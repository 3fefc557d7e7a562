"""The trainer's data builders route generated-task specs (``--dataset synthetic|chain:...``)
through one registry: the training and held-out problems, the default policy, the instruction
and the evaluation name."""

from __future__ import annotations

from types import SimpleNamespace

from strace_ds.assets import LONG_CHAIN_DIR, chain_policy_dir, default_policy_dir
from strace_ds.config import TrainConfig
from strace_ds.data.chain import ChainConfig, chain_dataset
from strace_ds.evaluation.benchmarks import load_benchmark
from strace_ds.train import setup as builders
from strace_ds.train.loop import Trainer


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**kw)


def test_chain_spec_builds_its_data_policy_and_instruction() -> None:
    cfg = _cfg(dataset="chain:decisive=2,filler=0", dataset_size=30, eval_size=7, seed=3)
    train = builders.load_train_data(cfg.data, cfg.seed, cfg.max_bad_gold_frac)
    assert train.source == "chain:train" and len(train) == 30
    want = chain_dataset("train", 30, 3, ChainConfig(decisive=2, filler=0))
    assert [e.prompt for e in train.examples] == [e.prompt for e in want.examples]
    held = builders.load_eval_data(cfg.eval, cfg.dataset, cfg.seed)
    assert held.source == "chain:test" and len(held) == 7
    assert builders.resolve_model(cfg.data) == str(chain_policy_dir())
    # a task shape with a shipped build of its own trains that build
    long = _cfg(dataset="chain:decisive=5,filler=2")
    assert builders.resolve_model(long.data) == str(LONG_CHAIN_DIR) != str(chain_policy_dir())
    assert builders.run_instruction(cfg.data) == ""
    assert Trainer.eval_name.fget(SimpleNamespace(cfg=cfg)) == "chain"


def test_synthetic_and_hub_specs_keep_their_behaviour() -> None:
    cfg = _cfg()
    assert builders.resolve_model(cfg.data) == str(default_policy_dir())
    train = builders.load_train_data(cfg.data, cfg.seed, cfg.max_bad_gold_frac)
    assert train.source == "synthetic:train"
    assert builders.run_instruction(cfg.data) == ""
    assert Trainer.eval_name.fget(SimpleNamespace(cfg=cfg)) == "synthetic"
    hub = SimpleNamespace(dataset="org/set", instruction=None, model="some/model")
    assert builders.run_instruction(hub) is None
    assert builders.load_eval_data(SimpleNamespace(eval_dataset=None, eval_every=0), hub.dataset,
                                   seed=0) is None  # fmt: skip
    assert builders.resolve_model(hub) == "some/model"


def test_chain_benchmark_is_registered() -> None:
    data = load_benchmark("chain", limit=5)
    assert data.source == "chain:test" and len(data) == 5
    assert data.examples[0].prompt == chain_dataset("test", 5, 0).examples[0].prompt
