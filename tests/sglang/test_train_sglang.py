"""Trainer x SGLang: real CPU SGLang servers, real ``scripts/train.py`` runs (``--rollout sglang``).

What the tier checks, on the embedded tiny policy:

1. **Weight versions advance**, one per step: every sync is seen on the server
   (``/model_info``) and in the answers' ``weight_version``; the weights directory keeps
   ``v<N-1>``/``v<N>``, and ``v<N>`` is bit-identical to the exported final policy.
2. **SGLang's greedy output equals the trainer's** after *every* sync (step 0 included): this
   file doubles as a test-only driver
   (``python tests/sglang/test_train_sglang.py <train.py flags>``) that wraps
   :meth:`Trainer.sync_weights`; after each sync it gathers the ZeRO-3 weights into a plain
   transformers copy and compares greedy answers token for token with the server's.
3. **Log-prob mismatch** (TensorBoard ``rollout/logprob_diff_max``/``_mean``, and the driver's
   own teacher-forced check) stays below :data:`LOGPROB_DIFF_MAX_BOUND`.
4. **A server killed mid-run** (``--save_every 1``; SIGKILL of its process group after the step-2
   checkpoint) makes the trainer exit non-zero with ``SGLangServerError`` naming the URL, leaves
   ``checkpoints/latest`` on a complete checkpoint (trainer state + DeepSpeed shards that
   ``zero_to_fp32`` consolidates), and ``--resume auto`` against a fresh server finishes the run;
   the fresh server then holds the final weights (greedy equal to transformers on ``final``).

``--sglang-launch`` (the trainer starts and stops its own server; two DeepSpeed ranks when the
``deepspeed`` launcher is installed) drives test 1; servers started by the test
(``--sglang-url``) drive test 4. Marked ``sglang`` and ``slow``; skipped with the reason when the
SGLang environment (``$STRACE_DS_SGLANG_PYTHON``, default ``.venv-sglang/bin/python``, built by
``scripts/setup_sglang_env.sh --cpu``) is absent. Three server starts in all (~40 s each on a
quiet 2-core machine).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "scripts" / "train.py"
SGLANG_PYTHON = Path(
    os.environ.get("STRACE_DS_SGLANG_PYTHON") or REPO / ".venv-sglang" / "bin" / "python"
)
PROBE_ENV = "STRACE_DS_SYNC_PROBE"
"""When set, running this file as a script trains with the per-sync check, appending one JSON
line per sync to the file it names."""
PROBE_PROMPTS = 4
PROBE_MAX_NEW_TOKENS = 32

LOGPROB_DIFF_MAX_BOUND = 1e-3
"""Bound on max |SGLang log-prob - trainer log-prob| over a step's tokens (and on the driver's
teacher-forced check). Both sides run the same float32 weights on CPU with different kernels
(SGLang's torch-native attention vs transformers under ZeRO-3, different batching/padding), so
only rounding separates them: measured per-step max 2.4e-6 .. 1.8e-5 over six runs, 1 and 2
ranks (transformers rollouts vs the trainer: up to 1.1e-5; greedy teacher-forced: up to 9e-6).
1e-3 leaves a 50-100x margin for other CPUs, BLAS builds and thread counts, yet sits far below
what any real desynchronisation produces: one training step (v2 -> v3) moved the max per-token
log-prob of the greedy answers by 1.3-3.7 nats, so answers from weights one version stale, or
half loaded, exceed it by more than 1000x."""
LOGPROB_DIFF_MEAN_BOUND = 1e-4
"""Bound on the per-token mean (measured 1.6e-7 .. 4.6e-7)."""
TIE_GAP = 1e-4
"""Greedy answers must agree token for token; the only tolerated divergence is at a near-tie,
where transformers' top-2 logits differ by less than this (float32 rounding can then pick either
token). Measured: never needed on the tiny policy; a tolerated tie is printed."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.sglang,
    pytest.mark.skipif(
        not SGLANG_PYTHON.exists(),
        reason=f"SGLang env not found at {SGLANG_PYTHON}: build it with "
        "`bash scripts/setup_sglang_env.sh --cpu` or set STRACE_DS_SGLANG_PYTHON",
    ),
]

SMALL = [
    "--steps", "3",
    "--prompts_per_step", "8",
    "--group_size", "4",
    "--max_new_tokens", "32",
    "--mini_batches", "2",
    "--micro_batch_size", "8",
    "--eval_every", "-1",
    "--reward_workers", "1",
    "--loss", "s_trace",
    "--ds_config", str(REPO / "ds_configs" / "zero3.json"),
    "--output_dir", "out",
    "--log_dir", "runs",
    "--rollout", "sglang",
]


# --------------------------------------------------------------------------- shared helpers


def hf_greedy(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy answer, cut after the first EOS (SGLang includes the EOS too)."""
    eos = model.config.eos_token_id
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=model.config.pad_token_id,
                         top_k=None, top_p=None, temperature=None, synced_gpus=False)
    answer = out[0, len(prompt):].tolist()
    return answer[: answer.index(eos) + 1] if eos in answer else answer


@torch.no_grad()
def compare_greedy(model: Any, prompts: list[list[int]], answers: list[list[int]],
                   max_new_tokens: int) -> tuple[list[str], list[str]]:
    """Compare SGLang's greedy ``answers`` with ``model``'s; returns (mismatches, near ties)."""
    mismatches, ties = [], []
    for k, (prompt, got) in enumerate(zip(prompts, answers)):
        want = hf_greedy(model, prompt, max_new_tokens)
        if got == want:
            continue
        i = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got),
                                                                             len(want)))
        what = f"prompt {k}: first difference at token {i}: sglang {got} vs transformers {want}"
        if i < len(got) and i < len(want):
            logits = model(torch.tensor([prompt + want[:i]])).logits[0, -1].double()
            gap = float(logits[want[i]] - logits[got[i]])
            if gap < TIE_GAP:
                ties.append(f"{what} (near tie, logit gap {gap:.2e})")
                continue
            what += f" (logit gap {gap:.2e})"
        mismatches.append(what)
    return mismatches, ties


@torch.no_grad()
def teacher_forced_diff(model: Any, prompts: list[list[int]], answers: list[list[int]],
                        logprobs: list[list[float]]) -> float:
    """max |rollout log-prob - log_softmax(model logits)| of greedy answers (temperature 0:
    SGLang reports the untempered log-probs)."""
    worst = 0.0
    for prompt, answer, lp in zip(prompts, answers, logprobs):
        if not answer:
            continue
        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].double()
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(answer)[:, None])[:, 0]
        worst = max(worst, float((torch.tensor(lp, dtype=torch.float64) - ref).abs().max()))
    return worst


def _get_json(url: str, timeout: float = 30.0) -> Any:
    import requests

    r = requests.get(url, timeout=timeout)
    r.raise_for_status()
    return r.json()


# --------------------------------------------------------------------------- the driver


def _probe_main(argv: list[str]) -> int:
    """``scripts/train.py`` with a check after every weight sync (see the module docstring)."""
    from strace_ds import distributed as dist_utils
    from strace_ds.rollout import SamplingParams
    from strace_ds.train import loop as trainer_mod

    out = Path(os.environ[PROBE_ENV])
    build_engine = trainer_mod.builders.build_policy_engine
    sync_weights = trainer_mod.Trainer.sync_weights
    plain: dict[str, Any] = {}

    def probed_build_engine(*args: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForCausalLM

        # Bound by name, so the hook follows the builder's signature.
        model_path = inspect.signature(build_engine).bind(*args, **kwargs).arguments["model_path"]
        # A plain copy, loaded before HfDeepSpeedConfig exists (else zero.Init partitions it).
        plain["model"] = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32).eval()
        return build_engine(*args, **kwargs)

    @torch.no_grad()
    def probed_sync_weights(self: Any, version: int) -> None:
        sync_weights(self, version)
        # The trainer's policy right now: the same gather the sync used (every rank takes part).
        # What the sync sent: the gathered policy, merged (base + scaled B A) under LoRA;
        # tests/unit/train/test_lora.py checks the merge gives the adapted model's outputs.
        named = dict(self.policy_weights())
        if not self.is_main:
            return
        probe_model = plain["model"]
        missing, unexpected = probe_model.load_state_dict(named, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        prompts = [list(p) for p in self.prompt_ids[:PROBE_PROMPTS]]
        gen = self.rollout.generate(prompts, n=1, sampling=SamplingParams(
            max_new_tokens=PROBE_MAX_NEW_TOKENS, temperature=0.0))
        engine = getattr(self.rollout, "engine", self.rollout)  # LeaderSync wraps it
        mismatches, ties = compare_greedy(probe_model, prompts, gen.token_ids,
                                          PROBE_MAX_NEW_TOKENS)
        record = {
            "version": version,
            "answer_version": gen.weight_version,
            "server_versions": [_get_json(u + "/model_info")["weight_version"]
                                for u in engine.urls],
            "urls": engine.urls,
            "world_size": dist_utils.world_size(),
            "prompts": prompts,
            "sglang": gen.token_ids,
            "mismatches": mismatches,
            "ties": ties,
            "logprob_diff_max": teacher_forced_diff(probe_model, prompts, gen.token_ids,
                                                    gen.logprobs),
        }
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")

    trainer_mod.builders.build_policy_engine = probed_build_engine
    trainer_mod.Trainer.sync_weights = probed_sync_weights
    sys.path.insert(0, str(TRAIN.parent))
    import train  # scripts/train.py

    return train.main(argv)


# --------------------------------------------------------------------------- test plumbing


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               **extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    print(f"\n{' '.join(cmd[:3])} ... took {time.monotonic() - start:.0f} s")
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _check_logprob_scalars(scalars: dict[str, list[tuple[int, float]]], steps: list[int]) -> None:
    worst = scalars["rollout/logprob_diff_max"]
    mean = scalars["rollout/logprob_diff_mean"]
    assert [s for s, _ in worst] == steps and [s for s, _ in mean] == steps
    print(f"rollout/logprob_diff_max per step: {[f'{v:.1e}' for _, v in worst]}; "
          f"mean: {[f'{v:.1e}' for _, v in mean]}")
    assert all(v < LOGPROB_DIFF_MAX_BOUND for _, v in worst), worst
    assert all(v < LOGPROB_DIFF_MEAN_BOUND for _, v in mean), mean
    assert all(v == 0.0 for _, v in scalars["rollout/logprob_diff_frac"])


def _state(ckpt_dir: Path, tag: str | None = None) -> dict[str, Any]:
    tag = tag or (ckpt_dir / "latest").read_text().strip()
    return json.loads((ckpt_dir / tag / "trainer_state.json").read_text())


def _steps_logged(state: dict[str, Any]) -> list[dict[str, float]]:
    return [h for h in state["history"] if "reward/mean" in h]


def _load_model(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _load_model(a).state_dict(), _load_model(b).state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{a} and {b} differ in {different}"


def _launcher() -> list[str]:
    """Two CPU ranks through the deepspeed launcher when it is installed, else one process."""
    from strace_ds.rollout.sglang.server import free_port

    ds = Path(sys.executable).parent / "deepspeed"
    if ds.exists():
        return [str(ds), "--num_nodes", "1", "--num_gpus", "2", "--master_port", str(free_port())]
    return [sys.executable]


@pytest.fixture(scope="module")
def policy_dir(tiny_policy: Path) -> Path:
    return tiny_policy


# --------------------------------------------------------------------------- tests


LORA = ["--lora_rank", "4", "--lora_alpha", "8", "--lr", "2e-3", "--export_merged", "true"]
"""LoRA adapters: SGLang receives the merged weights at each sync, like the in-process engine."""


@pytest.mark.parametrize("adapters", [[], LORA], ids=["full", "lora"])
def test_launch_trains_with_synced_weights(policy_dir: Path, tmp_path: Path,
                                           adapters: list[str]) -> None:
    """``--sglang-launch``: versions advance, greedy output and log-probs match every sync."""
    probe = tmp_path / "probe.jsonl"
    run = "launch"
    _run([*_launcher(), __file__, "--model", str(policy_dir), "--run_name", run, *SMALL,
          *adapters, "--sglang-launch", str(SGLANG_PYTHON)], cwd=tmp_path,
         **{PROBE_ENV: str(probe)})
    records = [json.loads(line) for line in probe.read_text().splitlines()]
    run_dir = tmp_path / "out" / run

    # 1. one version per step, seen by the answers and by the server itself
    assert [r["version"] for r in records] == [0, 1, 2, 3]
    for r in records:
        assert r["answer_version"] == r["version"]
        assert r["server_versions"] == [str(r["version"])]
    state = _state(run_dir / "checkpoints")
    assert state["step"] == 3 and len(_steps_logged(state)) == 3
    assert sorted(p.name for p in (run_dir / "sglang_weights").iterdir()) == ["v2", "v3"]
    _assert_same_weights(run_dir / "sglang_weights" / "v3", run_dir / "final")

    # 2. greedy SGLang == greedy transformers on the trainer's gathered weights, every sync
    for r in records:
        for tie in r["ties"]:
            print(f"v{r['version']}: tolerated {tie}")
        assert not r["mismatches"], f"after sync v{r['version']}: {r['mismatches']}"
    # ... on weights that did move, and the last sync's answers are the exported policy's
    final = _load_model(run_dir / "final")
    base = _load_model(policy_dir).state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in final.state_dict().items()), \
        "training changed no weight"
    mismatches, _ = compare_greedy(final, records[-1]["prompts"], records[-1]["sglang"],
                                   PROBE_MAX_NEW_TOKENS)
    assert not mismatches, mismatches

    # 3. log-prob mismatch: TensorBoard (sampled rollouts) and teacher-forced greedy answers
    _check_logprob_scalars(_scalars(tmp_path / "runs" / run), [1, 2, 3])
    worst = max(r["logprob_diff_max"] for r in records)
    print(f"greedy teacher-forced max |SGLang - transformers|: {worst:.1e}; "
          f"{records[0]['world_size']} rank(s)")
    assert worst < LOGPROB_DIFF_MAX_BOUND

    # the trainer stopped the server it launched
    import requests

    with pytest.raises(requests.ConnectionError):
        requests.get(records[0]["urls"][0] + "/health", timeout=5)


def test_killed_server_fails_cleanly_and_resume_continues(policy_dir: Path,
                                                          tmp_path: Path) -> None:
    """``--sglang-url``: SIGKILL the server once the step-2 checkpoint is written, then resume."""
    from strace_ds.rollout.sglang.server import SGLangServer

    run = "killed"
    run_dir = tmp_path / "out" / run
    ckpt_dir = run_dir / "checkpoints"
    args = [str(TRAIN), "--model", str(policy_dir), "--run_name", run, *SMALL,
            "--save_every", "1", "--export", "true"]
    args[args.index("--steps") + 1] = "4"

    with contextlib.ExitStack() as stack:
        first = SGLangServer(SGLANG_PYTHON, policy_dir, device="cpu",
                             log_path=tmp_path / "server1.log", startup_timeout_s=600)
        stack.enter_context(first)
        pgid = first.proc.pid  # own session: the group holds SGLang's scheduler too
        stdout = stack.enter_context(open(tmp_path / "train1.out", "w"))
        stderr = stack.enter_context(open(tmp_path / "train1.err", "w"))
        trainer = subprocess.Popen([sys.executable, *args, "--sglang-url", first.url],
                                   cwd=tmp_path, env=_env(), stdout=stdout, stderr=stderr)
        stack.callback(lambda: trainer.poll() is None and trainer.kill())
        killed_at: list[float] = []

        def kill_after_step_2() -> None:
            latest = ckpt_dir / "latest"
            while trainer.poll() is None:
                with contextlib.suppress(OSError):
                    if latest.read_text().strip() >= "step_000002":
                        os.killpg(pgid, signal.SIGKILL)
                        killed_at.append(time.monotonic())
                        return
                time.sleep(0.05)

        watcher = threading.Thread(target=kill_after_step_2, daemon=True)
        watcher.start()
        code = trainer.wait(timeout=900)
        watcher.join(timeout=5)
        exited_after = time.monotonic() - killed_at[0] if killed_at else None
        first.stop()
        err = (tmp_path / "train1.err").read_text()
        assert killed_at, f"run ended (code {code}) before its step-2 checkpoint:\n{err[-4000:]}"
        print(f"\ntrainer exited with code {code} {exited_after:.1f} s after the kill")

        # the documented error, naming the URL, in bounded time (3 retries: 1 + 2 + 4 s backoff)
        assert code != 0
        assert re.search(rf"SGLangServerError: .*SGLang server {re.escape(first.url)} failed "
                         r"POST /(generate|update_weights_from_disk) 4 times", err), err[-4000:]
        assert f"Is the server at {first.url} running" in err
        assert exited_after < 120

        # checkpoints/latest names a complete checkpoint: step 2, or step 3 if the kill landed
        # while step 3's checkpoint was being written (no later step can finish without a server)
        tag = (ckpt_dir / "latest").read_text().strip()
        assert tag in ("step_000002", "step_000003"), tag
        step = int(tag.removeprefix("step_"))
        assert not list(ckpt_dir.glob(".tmp-*")), "a half-written checkpoint was left behind"
        saved = _state(ckpt_dir)
        assert saved["step"] == step and len(_steps_logged(saved)) == step
        tag_dir = ckpt_dir / tag
        assert list(tag_dir.glob("*model_states.pt")) and list(tag_dir.glob("*optim_states.pt"))
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        reference = dict(_load_model(policy_dir).named_parameters())
        assert {k: v.shape for k, v in weights.items() if k in reference} == \
            {k: v.shape for k, v in reference.items()}
        assert any(not torch.equal(weights[k], reference[k]) for k in reference), \
            "the checkpoint holds the untrained weights"

        # --resume auto with a fresh server finishes the run
        second = SGLangServer(SGLANG_PYTHON, policy_dir, device="cpu",
                              log_path=tmp_path / "server2.log", startup_timeout_s=600)
        stack.enter_context(second)
        done = _run([sys.executable, *args, "--sglang-url", second.url, "--resume", "auto"],
                    cwd=tmp_path)
        assert "resumed from" in done.stdout + done.stderr
        state = _state(ckpt_dir)
        assert state["step"] == 4 and len(_steps_logged(state)) == 4
        assert _steps_logged(state)[:step] == _steps_logged(saved)
        assert sorted(p.name for p in (run_dir / "sglang_weights").iterdir()) == ["v3", "v4"]
        _check_logprob_scalars(_scalars(tmp_path / "runs" / run), [1, 2, 3, 4])

        # the server holds the final weights: its greedy output is the exported policy's
        assert _get_json(second.url + "/model_info")["weight_version"] == "4"
        from transformers import AutoTokenizer

        from strace_ds.assets.recipes.arithmetic import chat_prompt
        from strace_ds.rollout import SamplingParams
        from strace_ds.rollout.sglang import SGLangRolloutEngine

        final = _load_model(run_dir / "final")
        tok = AutoTokenizer.from_pretrained(run_dir / "final")
        questions = ["What is 3 + 4?", "Compute 12 - 5.", "What is 7 * 8?", "What is 2 + 2?"]
        prompts = [tok(chat_prompt(tok, q), add_special_tokens=False).input_ids
                   for q in questions]
        engine = SGLangRolloutEngine(second.url, tmp_path / "unused", weight_version=4,
                                     timeout_s=120)
        stack.callback(engine.close)
        gen = engine.generate(prompts, 1, SamplingParams(max_new_tokens=PROBE_MAX_NEW_TOKENS,
                                                         temperature=0.0))
        assert gen.weight_version == 4
        mismatches, ties = compare_greedy(final, prompts, gen.token_ids, PROBE_MAX_NEW_TOKENS)
        assert not mismatches, mismatches
        worst = teacher_forced_diff(final, prompts, gen.token_ids, gen.logprobs)
        print(f"final greedy: SGLang == transformers on {len(prompts)} prompts ({len(ties)} "
              f"tolerated near ties); teacher-forced max |diff| {worst:.1e}")
        assert worst < LOGPROB_DIFF_MAX_BOUND



def test_async_rollouts_respect_the_staleness_bound_across_a_resume(policy_dir: Path,
                                                                    tmp_path: Path) -> None:
    """``--max_staleness 1`` (two ranks when the launcher is installed): the server generates
    the next step over HTTP while DeepSpeed trains; every step after the first trains on
    answers one version old, weighted by the behaviour correction; a checkpoint holds the
    answers in flight and ``--resume auto`` (a fresh server) trains on them, never older."""
    run = "async"
    args = [*_launcher(), str(TRAIN), "--model", str(policy_dir), "--run_name", run, *SMALL,
            "--sglang-launch", str(SGLANG_PYTHON), "--max_staleness", "1",
            "--behaviour_correction", "token"]
    args[args.index("--steps") + 1] = "4"
    _run([*args, "--stop_after", "2"], cwd=tmp_path)
    ckpt_dir = tmp_path / "out" / run / "checkpoints"
    inflight = sorted(p.name for p in (ckpt_dir / "step_000002").glob("inflight-rank*.pt"))
    assert inflight == [f"inflight-rank{r}.pt" for r in range(len(inflight))] and inflight
    _run([*args, "--resume", "auto"], cwd=tmp_path)
    history = _steps_logged(_state(ckpt_dir))
    assert [h["rollout/staleness_max"] for h in history] == [0.0, 1.0, 1.0, 1.0]
    assert all(h["behaviour/kl"] > history[0]["behaviour/kl"] for h in history[1:])
    assert all(h["perf/generator_idle_s"] >= 0 for h in history)
    assert _state(ckpt_dir)["step"] == 4


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
