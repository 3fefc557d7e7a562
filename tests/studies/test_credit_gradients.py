"""benchmarks/credit_gradients.py: the gradient probe of the credit study and its bootstrap."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.credit_gradients import (
    batch_gradients,
    bootstrap_ci,
    draw_batches,
    gradient_probe,
    gradient_stats,
    load_policy,
    method_config,
)
from strace_ds.losses import PRESETS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

TINY = str(REPO / "strace_ds" / "assets" / "tiny-qwen3")
SIZES = dict(n_batches=2, prompts_per_batch=2, group_size=4, max_new_tokens=24, seed=0)
# s_trace in the ratio form: the presets' weight form is GRPO exactly on-policy (no past
# ratio moves), so only the ratio form gives the probe a second gradient to tell apart.
PROBED = ["grpo", "s_trace@ratio", "gspo"]


@pytest.fixture(scope="module")
def probe() -> dict:
    return gradient_probe(TINY, "synthetic", PROBED, **SIZES)


@pytest.fixture(scope="module")
def sampled():
    """The policy and the 2 x n_batches batches the probe draws (same seed, same sizes)."""
    model, tok = load_policy(TINY)
    torch.set_num_threads(1)
    batches = draw_batches(model, tok, "synthetic", 2 * SIZES["n_batches"],
                           SIZES["prompts_per_batch"], SIZES["group_size"],
                           SIZES["max_new_tokens"], SIZES["seed"])  # fmt: skip
    return model, batches


def test_result_structure(probe):
    json.dumps(probe)  # JSON-able (NaN allowed, as json writes it)
    for key, value in SIZES.items():
        assert probe[key] == value
    assert probe["model_dir"] == TINY and probe["task"] == "synthetic"
    assert 0.0 <= probe["reward_mean"] <= 1.0
    assert list(probe["presets"]) == PROBED
    for res in probe["presets"].values():
        assert set(res) >= {"rel_variance", "noise_to_signal", "cosine", "cosine_mean",
                            "grad_norm_mean", "informative_groups_frac"}  # fmt: skip
        assert isinstance(res["cosine"], list) and len(res["cosine"]) == SIZES["n_batches"]
        assert all(isinstance(c, float) for c in res["cosine"])
        assert all(-1.0 - 1e-9 <= c <= 1.0 + 1e-9 for c in res["cosine"])
        assert res["cosine_mean"] == pytest.approx(float(np.mean(res["cosine"])))
        assert res["rel_variance"] >= 0.0 and res["grad_norm_mean"] > 0.0
        assert 0.0 < res["informative_groups_frac"] <= 1.0


def test_probe_is_the_stats_of_its_batches(probe, sampled):
    """Same answers for every preset, small batches first, large batches the second half."""
    model, batches = sampled
    configs = {name: method_config(name) for name in PROBED}
    grads = [batch_gradients(model, gb, configs, SIZES["max_new_tokens"])[0] for gb in batches]
    n = SIZES["n_batches"]
    rewards = torch.cat([gb.rewards for gb in batches])
    assert probe["reward_mean"] == pytest.approx(float(rewards.mean()))
    for name in PROBED:
        stats = gradient_stats([g[name] for g in grads[:n]], [g[name] for g in grads[n:]])
        got = probe["presets"][name]
        assert got["rel_variance"] == pytest.approx(stats["rel_variance"], rel=1e-6)
        assert got["cosine"] == pytest.approx(stats["cosine"], rel=1e-6, abs=1e-9)
    # the presets' losses differ: so do their gradients on the same answers
    b = next(i for i, gb in enumerate(batches) if bool(gb.informative.any()))
    assert not torch.allclose(grads[b]["grpo"], grads[b]["s_trace@ratio"])
    # ... and the weight form, on-policy, is GRPO's gradient (docs/ALGORITHMS.md identities)
    weight = batch_gradients(model, batches[b], {"s": PRESETS["s_trace"]}, SIZES["max_new_tokens"])
    assert PRESETS["s_trace"].form == "weight"
    torch.testing.assert_close(weight[0]["s"], grads[b]["grpo"], rtol=1e-5, atol=1e-9)


def _reference_grpo_gradient(model, gb) -> torch.Tensor:
    """Float64, written independently: the gradient of -sum_{i,t valid} A_i logp_{i,t} / N_valid
    (GRPO's token-mean surrogate at ratio 1, where clipping is inactive), logp from the full
    logits of a double copy of the policy."""
    ref = copy.deepcopy(model).double().eval()
    b = gb.batch
    P, R = b.prompt_len, b.response_ids.shape[1]
    logits = ref(input_ids=b.input_ids, attention_mask=b.attention_mask,
                 position_ids=b.position_ids, use_cache=False).logits  # fmt: skip
    # answer token j is predicted by the logits at column P + j - 1
    logp_all = torch.log_softmax(logits[:, P - 1 : P + R - 1], dim=-1)
    logp = logp_all.gather(-1, b.response_ids.unsqueeze(-1)).squeeze(-1)  # [N, R]
    mask = b.response_mask.double()
    adv = gb.advantages.double().unsqueeze(-1)
    loss = -(adv * logp * mask).sum() / mask.sum()
    params = list(ref.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for p, g in zip(params, grads)])  # fmt: skip


def test_grpo_gradient_matches_float64_surrogate(sampled):
    model, batches = sampled
    informative = [gb for gb in batches if bool(gb.informative.any())]
    assert informative, "no batch with a learning signal at this seed"
    for gb in informative[:2]:
        got = batch_gradients(model, gb, {"grpo": PRESETS["grpo"]}, SIZES["max_new_tokens"])[0]
        want = _reference_grpo_gradient(model, gb)
        assert got["grpo"].shape == want.shape
        assert float(want.norm()) > 0
        err = float((got["grpo"].double() - want).norm() / want.norm())
        assert err < 1e-4, err


def test_gradient_stats_by_hand():
    small = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    large = [torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0])]
    s = gradient_stats(small, large)
    # gbar = (.5, .5): ||g_b - gbar||^2 = .5 each, ||gbar||^2 = .5
    assert s["rel_variance"] == pytest.approx(1.0)
    assert s["cosine"] == pytest.approx([1 / math.sqrt(2)] * 2)
    assert s["grad_norm_mean"] == pytest.approx(1.0)
    # tr Cov: sample variance .5 * n / (n - 1) = 1; G = (1, 1), gbar . G = 1
    assert s["noise_to_signal"] == pytest.approx(1.0)
    # a batch without signal counts as cosine 0; no large-batch signal gives NaN
    assert gradient_stats([torch.zeros(2), small[0]], large)["cosine"][0] == 0.0
    assert all(math.isnan(c) for c in gradient_stats(small, [torch.zeros(2)])["cosine"])


def test_bootstrap_ci_brackets_and_narrows():
    rng = np.random.default_rng(1)
    few, many = rng.normal(3.0, 1.0, 10), rng.normal(3.0, 1.0, 1000)
    m, lo, hi = bootstrap_ci(few)
    assert m == pytest.approx(float(few.mean())) and lo < m < hi
    M, LO, HI = bootstrap_ci(many)
    width, narrow = hi - lo, HI - LO
    assert LO < M < HI and narrow < width / 3  # ~sqrt(100) narrower
    # roughly the normal interval 1.96 sd / sqrt(n)
    normal = 2 * 1.96 * many.std() / math.sqrt(many.size)
    assert narrow == pytest.approx(normal, rel=0.15)
    assert bootstrap_ci(few, seed=0) == bootstrap_ci(list(few), seed=0)  # seeded
    med, mlo, mhi = bootstrap_ci(few, stat=np.median)
    assert med == pytest.approx(float(np.median(few))) and mlo <= med <= mhi
    assert bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
