"""Memory and speed knobs never change the maths: every preset's update is the same for any
micro-batch size and for 1 or 2 ranks, measured through the real DeepSpeed ZeRO-3 update.

``tests/helpers/update_probe.py`` runs step 1 of a real trainer and records the full reduced
gradient of each of its two policy updates; here they are compared across micro-batch 4, 16, 64
on one rank and micro-batch 4, 32 on two ranks (the same 128 answers: the probe samples each prompt
alone, seeded by its ids). The S-trace / 80-20 selection is one decision per step over all
ranks (``docs/ALGORITHMS.md``, "Selection"); a per-micro-batch quantile measured 6-18%
relative differences here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from strace_ds.losses import FORMS, PRESETS

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "helpers" / "update_probe.py"
# One fixture runs every probe (about 40 one-step runs): minutes on a quiet machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
RTOL = 1e-5
# Updates after the first are taken at parameters one AdamW step on from gradients that differ
# by rounding; AdamW's step is m / sqrt(v) per parameter, so a rounding-level difference in a
# near-zero gradient moves its parameter by a fraction of lr. Measured (every preset, micro-batch
# 4/16 x 1 rank, 4/32 x 2 ranks): first update <= 6e-7, second 1e-6 to 1.6e-5 (s_trace+entropy,
# micro-batch 4; another machine of the same kind kept it under 1e-5). A real error is orders
# above both (a per-micro-batch selection measured 6-18%).
RTOL_AFTER_STEP = 1e-4

# S-trace in its other trace forms (the gate, the weight): the second update of the step is
# off-policy, where the forms differ
METHODS = [*PRESETS, *(f"s_trace@{f}" for f in FORMS if f != PRESETS["s_trace"].form),
           "s_trace+entropy"]  # with --entropy_coef 0.05: the bonus's gradient too


def rtol(update: int) -> float:
    """The tolerance of the ``update``-th optimizer update of a run (0-based)."""
    return RTOL if update == 0 else RTOL_AFTER_STEP


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe")
    presets = ",".join(METHODS)
    one = subprocess.run(
        [sys.executable, str(PROBE), str(out), "--presets", presets, "--micro", "4,16,64"],
        env=_env(), capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-4000:]
    launcher = shutil.which("deepspeed")
    assert launcher, "the deepspeed launcher is not on PATH"
    two = subprocess.run(
        [launcher, "--num_gpus", "2", "--master_port", "29517", str(PROBE), str(out),
         "--presets", presets, "--micro", "4,32", "--epoch_micro", "4", "--budgets", "160"],
        env=_env(), capture_output=True, text=True, timeout=1500, cwd=REPO,
    )  # fmt: skip
    assert two.returncode == 0, (two.stdout + two.stderr)[-4000:]
    return out


def _grads(
    out: Path, preset: str, micro: int, world: int, epochs: int = 1, budget: int | None = None
) -> list[torch.Tensor]:
    suffix = (f"-e{epochs}" if epochs > 1 else "") + (f"-t{budget}" if budget is not None else "")
    grads = torch.load(out / f"{preset}-m{micro}-w{world}{suffix}.pt")["grads"]
    assert len(grads) == 2 * epochs  # two mini-batches per epoch: one optimizer update each
    return grads


@pytest.mark.parametrize("preset", METHODS)
def test_update_is_independent_of_micro_batch_and_ranks(probes: Path, preset: str) -> None:
    reference = _grads(probes, preset, 64, 1)
    for micro, world in ((4, 1), (16, 1), (4, 2), (32, 2)):
        for update, (got, want) in enumerate(zip(_grads(probes, preset, micro, world), reference)):
            assert float(want.norm()) > 1e-3, "a zero gradient proves nothing"
            rel = float((got - want).norm() / want.norm())
            assert rel <= rtol(update), f"{preset} micro {micro} x {world} ranks #{update}: {rel}"


@pytest.mark.parametrize("preset", ["grpo", "s_trace"])
def test_epochs_reshuffle_the_same_way_for_any_rank_count(probes: Path, preset: str) -> None:
    """``--epochs 2``: the second pass re-shuffles groups between mini-batches; its updates
    are the same for micro-batch 4 or 64 and for 1 or 2 ranks, and differ from the first
    pass's (the shuffle moved groups and the policy moved)."""
    reference = _grads(probes, preset, 64, 1, epochs=2)
    assert torch.equal(reference[0], _grads(probes, preset, 64, 1)[0])  # epoch 0 is today's
    for micro, world in ((4, 2),):
        got_all = _grads(probes, preset, micro, world, epochs=2)
        for update, (got, want) in enumerate(zip(got_all, reference)):
            rel = float((got - want).norm() / want.norm())
            assert rel <= rtol(update), f"{preset} epochs 2, {micro} x {world} #{update}: {rel}"
    for later in reference[2:]:
        assert float((later - reference[0]).norm() / reference[0].norm()) > 1e-3


@pytest.mark.parametrize("preset", ["grpo", "s_trace"])
def test_token_budget_micro_batches_make_the_same_update(probes: Path, preset: str) -> None:
    """``--max_tokens_per_micro_batch``: 0 (fixed rows), 160 token slots (rows grouped by
    length, a varying number per micro-batch and per rank, padding trimmed) and the default
    (auto) make the same updates on 1 and 2 ranks."""
    reference = _grads(probes, preset, 64, 1)
    for budget, micro, world in ((0, 64, 1), (160, 64, 1), (160, 4, 2)):
        got_all = _grads(probes, preset, micro, world, budget=budget)
        for update, (got, want) in enumerate(zip(got_all, reference)):
            rel = float((got - want).norm() / want.norm())
            assert rel <= rtol(update), f"{preset} budget {budget} x {world}, #{update}: {rel}"


def test_selection_keeps_the_configured_share(probes: Path) -> None:
    for preset in ("s_trace", "highent_grpo"):
        frac = torch.load(probes / f"{preset}-m4-w2.pt")["select_frac"]
        assert frac == torch.load(probes / f"{preset}-m64-w1.pt")["select_frac"]
        assert 0.2 <= frac <= 0.23, frac  # top 20% of the entropies, ties kept


@pytest.fixture(scope="module")
def linear_probes(tmp_path_factory) -> Path:
    """One-rank probes of GRPO and S-trace (micro 16) under two engine configs, each in its
    own process (DeepSpeed's linear, once installed, stays for the process's life): the
    shipped ZeRO-3 (torch's linear) and ZeRO-3 with ``memory_efficient_linear: true``
    (DeepSpeed's autograd Function in every linear layer)."""
    out = tmp_path_factory.mktemp("linear")
    efficient = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    efficient["zero_optimization"]["memory_efficient_linear"] = True
    (out / "zero3_efficient.json").write_text(json.dumps(efficient))
    configs = {"z3": REPO / "ds_configs" / "zero3.json", "z3eff": out / "zero3_efficient.json"}
    procs = {tag: subprocess.Popen(
        [sys.executable, str(PROBE), str(out), "--presets", "grpo,s_trace", "--micro", "16",
         "--epoch_presets", "", "--ds_config", str(path), f"--tag=-{tag}"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) for tag, path in configs.items()}  # fmt: skip
    for tag, proc in procs.items():
        log, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{tag}: {log[-4000:]}"
    return out


@pytest.mark.parametrize("preset", ["grpo", "s_trace"])
def test_plain_linear_makes_the_same_update(linear_probes: Path, preset: str):
    """ZeRO-3 runs with torch's own linear (the resolver sets ``memory_efficient_linear`` to
    false: DeepSpeed's replacement slowed every linear in the process, generation included);
    the update equals the one made with DeepSpeed's linear."""
    runs = {tag: torch.load(linear_probes / f"{preset}-m16-w1-{tag}.pt", weights_only=False)
            for tag in ("z3", "z3eff")}  # fmt: skip
    assert "deepspeed" not in runs["z3"]["linear"], runs["z3"]["linear"]
    assert "deepspeed" in runs["z3eff"]["linear"], runs["z3eff"]["linear"]  # the other path ran
    assert len(runs["z3"]["grads"]) == 2
    for update, (got, want) in enumerate(zip(runs["z3eff"]["grads"], runs["z3"]["grads"])):
        assert float(want.norm()) > 1e-3, "a zero gradient proves nothing"
        rel = float((got - want).norm() / want.norm())
        assert rel <= rtol(update), f"{preset} DeepSpeed's linear vs torch's, #{update}: {rel}"


@pytest.fixture(scope="module")
def packed_probes(probes: Path) -> Path:
    """``--pack_micro_batches true`` probes next to the padded ones: GRPO and S-trace at
    micro-batch 16 on one rank, S-trace at micro-batch 4 on two ranks, GRPO under the
    160-slot token budget (bins of varying width)."""
    one = subprocess.run(
        [sys.executable, str(PROBE), str(probes), "--presets", "grpo,s_trace", "--micro", "16",
         "--epoch_presets", "grpo", "--epoch_micro", "64", "--budgets", "160", "--pack",
         "--tag=-pack"],
        env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-4000:]
    two = subprocess.run(
        [shutil.which("deepspeed"), "--num_gpus", "2", "--master_port", "29519", str(PROBE),
         str(probes), "--presets", "s_trace", "--micro", "4", "--epoch_presets", "", "--pack",
         "--tag=-pack"],
        env=_env(), capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-4000:]
    return probes


@pytest.mark.parametrize(
    ("preset", "run"),
    [("grpo", "m16-w1-pack"), ("s_trace", "m16-w1-pack"), ("s_trace", "m4-w2-pack"),
     ("grpo", "m64-w1-e2-pack"), ("grpo", "m64-w1-t160-pack")],
)  # fmt: skip
def test_packed_micro_batches_make_the_same_update(packed_probes: Path, preset: str, run: str):
    """Padding-free micro-batches (rows laid end to end, positions restarting per row) make
    the padded update on 1 and 2 ranks, and compute fewer padded slots."""
    packed = torch.load(packed_probes / f"{preset}-{run}.pt", weights_only=False)
    reference_run = run.removesuffix("-pack").replace("m16-w1", "m64-w1").replace("m4-w2", "m64-w1")
    padded = torch.load(packed_probes / f"{preset}-{reference_run}.pt", weights_only=False)
    assert len(packed["grads"]) == len(padded["grads"]) >= 2
    for update, (got, want) in enumerate(zip(packed["grads"], padded["grads"])):
        assert float(want.norm()) > 1e-3, "a zero gradient proves nothing"
        rel = float((got - want).norm() / want.norm())
        assert rel <= rtol(update), f"{preset} {run}, update {update}: {rel}"
    assert packed["reward"] == padded["reward"]  # the same answers
    assert packed["pad_frac"] <= padded["pad_frac"], (packed["pad_frac"], padded["pad_frac"])
    # Packing computes fewer slots where rows share bins. Not in m64-w1-e2, where every row is
    # over half the longest, nor under the 160-token budget, whose micro-batches of near-equal
    # rows get a bin per row: the unpacked layout (one row per bin, no padding before a row).
    if "m64-w1-e2" not in run and "t160" not in run:
        assert packed["pad_frac"] < padded["pad_frac"], (packed["pad_frac"], padded["pad_frac"])


@pytest.fixture(scope="module")
def trainer_logprob_probes(probes: Path) -> Path:
    """GRPO and P-trace at micro-batch 16 with ``--old_logprobs trainer`` (the probes above
    run the default, ``auto``: the in-process engine's log-probs for these presets)."""
    run = subprocess.run(
        [sys.executable, str(PROBE), str(probes), "--presets", "grpo,p_trace", "--micro", "16",
         "--epoch_presets", "", "--old_logprobs", "trainer", "--tag=-trainer"],
        env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    return probes


@pytest.mark.parametrize("preset", ["grpo", "p_trace"])
def test_rollout_logprobs_as_proximal_make_the_trainers_update(trainer_logprob_probes, preset):
    """``--old_logprobs auto`` on the main command (in-process engine, float32, K = 0): the
    proximal log-probs are the rollout's, and the update is the one the trainer's scoring
    pass gives, to 1e-5 (the two differ by rounding: incremental decode vs full forward)."""
    auto = torch.load(trainer_logprob_probes / f"{preset}-m16-w1.pt", weights_only=False)
    scored = torch.load(trainer_logprob_probes / f"{preset}-m16-w1-trainer.pt", weights_only=False)
    assert (auto["old_logprobs"], scored["old_logprobs"]) == ("rollout", "trainer")
    assert auto["reward"] == scored["reward"]  # the same answers
    for update, (got, want) in enumerate(zip(auto["grads"], scored["grads"])):
        assert float(want.norm()) > 1e-3, "a zero gradient proves nothing"
        rel = float((got - want).norm() / want.norm())
        assert rel <= rtol(update), f"{preset} rollout vs trainer log-probs, update {update}: {rel}"
