"""The in-process engine's reserved KV cache: bit-identical to transformers' default cache in
generation, equal to ``DynamicLayer`` update by update (prefill, decode, past the reservation,
after the caller replaced the keys), and left out where it does not apply."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_qwen3 import tiny_qwen3
from transformers import Qwen3ForCausalLM
from transformers.cache_utils import DynamicLayer

import strace_ds.rollout.hf as hf_module
import strace_ds.rollout.kv_cache as kv_cache
from strace_ds.rollout.base import SamplingParams
from strace_ds.rollout.hf import HFRolloutEngine
from strace_ds.rollout.kv_cache import ReservedLayer, reserved_cache

EOS, PAD = 1, 0
PROMPTS = [[5, 6, 7, 8, 9], [9, 10], [11, 12, 13], [14]]  # left padding is exercised


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Qwen3ForCausalLM:
    """A vocabulary of 40: EOS likely enough that some rows stop early."""
    return tiny_qwen3(vocab_size=40, tie=False, eos=EOS, pad=PAD)


def generate(model, monkeypatch, reserved: bool, sampling: SamplingParams, spy=None):
    with monkeypatch.context() as m:
        if not reserved:
            m.setattr(hf_module, "reserved_cache", lambda *a, **k: None)
        elif spy is not None:
            m.setattr(hf_module, "reserved_cache", spy)
        engine = HFRolloutEngine(model, eos_token_id=EOS, pad_token_id=PAD, max_batch_size=16)
        return engine.generate(PROMPTS, 8, sampling)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(temperature=1.0, max_new_tokens=48, seed=3),
        SamplingParams(temperature=0.7, top_k=10, top_p=0.9, max_new_tokens=30, seed=4),
        SamplingParams(temperature=0.0, max_new_tokens=24),
    ],
    ids=["sampled", "top-k-top-p", "greedy"],
)
def test_generation_is_bit_identical_to_the_default_cache(model, monkeypatch, sampling) -> None:
    made = []

    def spy(module, reserve):
        cache = reserved_cache(module, reserve)
        made.append((cache, reserve))
        return cache

    got = generate(model, monkeypatch, True, sampling, spy=spy)
    want = generate(model, monkeypatch, False, sampling)
    assert got.token_ids == want.token_ids
    assert got.logprobs == want.logprobs  # exact, not close
    assert got.finish_reasons == want.finish_reasons
    if sampling.temperature > 0:  # rows that stopped early and rows that ran to the cap
        assert set(got.finish_reasons) == {"stop", "length"}
    # The reserved layers were used, reserved once for prompt width + answer cap, never regrown.
    (cache, reserve), *_ = made
    assert reserve == max(map(len, PROMPTS)) + sampling.max_new_tokens
    assert [type(layer) for layer in cache.layers] == [ReservedLayer, ReservedLayer]
    for layer in cache.layers:
        assert layer._key_buffer.shape[-2] == reserve
        assert layer.keys.data_ptr() == layer._key_buffer.data_ptr()
        assert layer.get_seq_length() == max(map(len, PROMPTS)) + max(map(len, got.token_ids)) - 1


def kv(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (rows, 2, length, 8)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("reserve", [64, 5, 1], ids=["room", "grows-once", "grows-often"])
def test_layer_updates_equal_dynamic_layer(reserve: int) -> None:
    ours, theirs = ReservedLayer(reserve), DynamicLayer()
    for step, length in enumerate([4, 1, 1, 3, 1, 1, 1]):  # prefill, then decode steps
        k, v = kv(3, length, step)
        got, want = ours.update(k, v), theirs.update(k, v)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
        assert ours.get_seq_length() == theirs.get_seq_length()
        assert ours.get_mask_sizes(1) == theirs.get_mask_sizes(1)
    assert ours._key_buffer.shape[-2] >= 12


def test_layer_follows_keys_the_caller_replaced() -> None:
    """Beam search reorders (a new tensor) and crops (a shorter view): later steps stay right."""
    ours, theirs = ReservedLayer(32), DynamicLayer()
    for layer in (ours, theirs):
        layer.update(*kv(3, 4, 0))
        layer.reorder_cache(torch.tensor([2, 0, 0]))
        layer.update(*kv(3, 1, 1))
        layer.crop(-2)
        layer.update(*kv(3, 2, 2))
    assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    assert ours.get_seq_length() == theirs.get_seq_length() == 5
    for step in range(40):  # replaced at every step, as beam search does: the room stays put
        ours.reorder_cache(torch.tensor([1, 2, 0]))
        ours.update(*kv(3, 1, 10 + step))
    assert ours._key_buffer.shape[-2] == 64


def test_reserve_must_be_positive() -> None:
    with pytest.raises(ValueError, match="reserve must be >= 1"):
        ReservedLayer(0)


def test_left_to_transformers_where_it_does_not_apply(model, monkeypatch) -> None:
    assert reserved_cache(model, 16) is not None
    with monkeypatch.context() as m:  # another cache asked for by the model's own config
        m.setattr(model.generation_config, "cache_implementation", "static")
        assert reserved_cache(model, 16) is None
    with monkeypatch.context() as m:  # generate's cache API before the version we test
        m.setattr(kv_cache.transformers, "__version__", "5.19.0")
        assert reserved_cache(model, 16) is None
