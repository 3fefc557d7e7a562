"""SGLang rollout engine against a REAL SGLang server (the fake-server unit tests:
``tests/unit/rollout/test_sglang_server.py``).

The ``sglang``-marked tests start one real ``sglang.launch_server`` on CPU per module, from the
SGLang environment named by ``$STRACE_DS_SGLANG_PYTHON`` (default ``.venv-sglang/bin/python``,
built by ``scripts/setup_sglang_env.sh --cpu``), and are skipped with the reason when it is
absent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.evaluation_cli import check_report, localize, readme_commands, run_evaluate

from strace_ds.rollout.base import SamplingParams
from strace_ds.rollout.sglang import SGLangRolloutEngine, SGLangServerError, StaleWeightsError
from strace_ds.rollout.sglang.server import SGLangServer

REPO = Path(__file__).resolve().parents[2]
SGLANG_PYTHON = Path(
    os.environ.get("STRACE_DS_SGLANG_PYTHON") or REPO / ".venv-sglang" / "bin" / "python"
)
LOGPROB_ATOL = 1e-4
"""Bound on |SGLang log-prob - transformers teacher-forced log-prob| (float32, both on CPU).
Measured max on the tiny policy: 6.6e-6 (``test_logprobs_match_teacher_forcing`` prints it)."""

# --------------------------------------------------------------------------- real server


def _engine(url: str, tmp_path: Path, **kw: Any) -> SGLangRolloutEngine:
    kw = {"max_retries": 2, "backoff_s": 0.05, "timeout_s": 5.0, **kw}
    return SGLangRolloutEngine(url, tmp_path / "weights", **kw)


needs_sglang = pytest.mark.skipif(
    not SGLANG_PYTHON.exists(),
    reason=f"SGLang env not found at {SGLANG_PYTHON}: build it with "
    "`bash scripts/setup_sglang_env.sh --cpu` or set STRACE_DS_SGLANG_PYTHON",
)


@pytest.fixture(scope="module")
def policy_dir(tiny_policy: Path) -> Path:
    """The default tiny policy (``tests/conftest.py``; built once, cached on disk)."""
    return tiny_policy


@pytest.fixture(scope="module")
def server(policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SGLangServer]:
    log = tmp_path_factory.mktemp("sglang") / "server.log"
    with SGLangServer(SGLANG_PYTHON, policy_dir, device="cpu", log_path=log,
                      startup_timeout_s=600) as srv:
        yield srv


@pytest.fixture(scope="module")
def hf_model(policy_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(policy_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    from strace_ds.assets.recipes.arithmetic import chat_prompt

    tok = AutoTokenizer.from_pretrained(policy_dir)
    questions = ["What is 3 + 4?", "Compute 12 - 5.", "What is 7 * 8?", "What is 2 + 2?"]
    return [tok(chat_prompt(tok, q), add_special_tokens=False).input_ids for q in questions]


# The evaluation CLI runs first, against the fresh server (weights and model path as launched).
@needs_sglang
@pytest.mark.sglang
def test_evaluate_cli_on_real_server(server: SGLangServer, policy_dir: Path,
                                     tmp_path: Path) -> None:
    argv = ["--model", str(policy_dir), "--benchmarks", "synthetic", "--k", "2", "--limit", "8",
            "--max-new-tokens", "24", "--rollout", "sglang", "--sglang-url", server.url,
            "--out", str(tmp_path / "results.json")]
    done = run_evaluate(argv)
    report = check_report(tmp_path / "results.json", argv)
    synthetic = report["benchmarks"]["synthetic"]
    assert synthetic["num_samples"] == 16
    assert str(synthetic["weight_version"]) == str(
        requests_json(server.url + "/model_info")["weight_version"])
    assert "synthetic" in done.stdout and "avg@2" in done.stdout


@needs_sglang
@pytest.mark.sglang
@pytest.mark.parametrize(
    "argv", [pytest.param(a, id=f"readme-{i}") for i, a in readme_commands("sglang")]
)
def test_readme_sglang_commands_run(argv: list[str], server: SGLangServer,
                                    policy_dir: Path, tmp_path: Path) -> None:
    """The SGLang evaluation command(s) of docs/EVALUATION.md, on the tiny policy and the
    offline fixtures."""
    local = localize(argv, policy_dir, tmp_path / "results.json", sglang_url=server.url)
    run_evaluate(local)
    check_report(tmp_path / "results.json", local)


def _hf_greedy(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    eos = model.config.eos_token_id
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=model.config.pad_token_id,
                         top_k=None, top_p=None, temperature=None)
    answer = out[0, len(prompt):].tolist()
    return answer[: answer.index(eos) + 1] if eos in answer else answer


@torch.no_grad()
def _teacher_forced_logprobs(model: Any, prompt: list[int], answer: list[int],
                             temperature: float) -> torch.Tensor:
    ids = torch.tensor([prompt + answer])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].double()  # [A, V]
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(1, torch.tensor(answer)[:, None])[:, 0]


@needs_sglang
@pytest.mark.sglang
def test_greedy_matches_transformers(server: SGLangServer, hf_model: Any, prompts: list[list[int]],
                                     tmp_path: Path) -> None:
    engine = _engine(server.url, tmp_path, timeout_s=120)
    gen = engine.generate(prompts, 2, SamplingParams(max_new_tokens=32, temperature=0.0))
    for i, prompt in enumerate(prompts):
        expected = _hf_greedy(hf_model, prompt, 32)
        assert gen.token_ids[2 * i] == expected, f"prompt {i}"
        assert gen.token_ids[2 * i + 1] == expected
        eos_hit = expected[-1] == hf_model.config.eos_token_id
        assert gen.finish_reasons[2 * i] == ("stop" if eos_hit else "length")
    assert gen.weight_version == 0
    engine.close()


@needs_sglang
@pytest.mark.sglang
def test_logprobs_match_teacher_forcing(server: SGLangServer, hf_model: Any,
                                        prompts: list[list[int]], tmp_path: Path) -> None:
    engine = _engine(server.url, tmp_path, timeout_s=120)
    worst = 0.0
    for temperature in (1.0, 0.7):
        gen = engine.generate(prompts, 3, SamplingParams(max_new_tokens=24,
                                                         temperature=temperature))
        for row, answer in enumerate(gen.token_ids):
            ref = _teacher_forced_logprobs(hf_model, prompts[gen.prompt_index[row]], answer,
                                           temperature)
            diff = (torch.tensor(gen.logprobs[row], dtype=torch.float64) - ref).abs().max()
            worst = max(worst, float(diff))
    print(f"\nmax |SGLang - transformers| log-prob difference: {worst:.3e}")
    assert worst < LOGPROB_ATOL
    engine.close()


def _perturbed(model: Any, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: p.detach() + 0.05 * torch.randn(p.shape, generator=g)
            for n, p in model.named_parameters()}


@needs_sglang
@pytest.mark.sglang
@pytest.mark.parametrize("sync_mode", ["disk", "tensor"])
def test_sync_weights_advances_version_and_changes_outputs(
    sync_mode: str, server: SGLangServer, hf_model: Any, prompts: list[list[int]],
    tmp_path: Path,
) -> None:
    import copy

    current = int(requests_json(server.url + "/model_info")["weight_version"])
    engine = _engine(server.url, tmp_path, timeout_s=120, sync_mode=sync_mode,
                     weight_version=current, keep_versions=1)
    version = current + 1
    new_weights = _perturbed(hf_model, seed=version)
    engine.sync_weights(iter(new_weights.items()), version)
    assert engine.weight_version == version and engine.last_sync_s is not None
    print(f"\nsync_weights({sync_mode}) of the tiny policy: {engine.last_sync_s * 1e3:.1f} ms "
          f"{engine.last_sync_breakdown}")
    perturbed = copy.deepcopy(hf_model)
    perturbed.load_state_dict(new_weights, strict=False)  # tied lm_head follows the embedding
    gen = engine.generate(prompts, 1, SamplingParams(max_new_tokens=16, temperature=0.0))
    assert gen.weight_version == version
    for i, prompt in enumerate(prompts):
        assert gen.token_ids[i] == _hf_greedy(perturbed, prompt, 16), f"prompt {i}"
    if sync_mode == "disk":
        assert [p.name for p in (tmp_path / "weights").iterdir()] == [f"v{version}"]
    engine.close()


def requests_json(url: str, payload: Any = None) -> Any:
    import requests

    r = requests.post(url, json=payload, timeout=30) if payload is not None else \
        requests.get(url, timeout=30)
    r.raise_for_status()
    return r.json()


@needs_sglang
@pytest.mark.sglang
def test_stale_version_on_real_server(server: SGLangServer, tmp_path: Path,
                                      prompts: list[list[int]]) -> None:
    current = int(requests_json(server.url + "/model_info")["weight_version"])
    engine = _engine(server.url, tmp_path, timeout_s=120, weight_version=current)
    engine.generate(prompts[:1], 1, SamplingParams(max_new_tokens=2))
    # Another client relabels the server: the engine must refuse the answers.
    requests_json(server.url + "/update_weight_version",
                  {"new_version": str(current + 100), "abort_all_requests": False})
    try:
        with pytest.raises(StaleWeightsError, match=f"'{current + 100}', expected '{current}'"):
            engine.generate(prompts[:1], 1, SamplingParams(max_new_tokens=2))
    finally:
        requests_json(server.url + "/update_weight_version",
                      {"new_version": str(current), "abort_all_requests": False})
    engine.close()


@needs_sglang
@pytest.mark.sglang
def test_killed_server_error_names_url_in_bounded_time(server: SGLangServer, tmp_path: Path,
                                                       prompts: list[list[int]]) -> None:
    # Runs last in this module: it stops the module's server.
    current = int(requests_json(server.url + "/model_info")["weight_version"])
    engine = _engine(server.url, tmp_path, timeout_s=30, max_retries=2, backoff_s=0.2,
                     weight_version=current)
    server.stop()
    assert not server.alive()
    start = time.monotonic()
    with pytest.raises(SGLangServerError, match=f"{server.url} failed POST /generate 3 times"):
        engine.generate(prompts[:2], 1, SamplingParams(max_new_tokens=4))
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"took {elapsed:.1f} s"  # 0.2 + 0.4 s backoff + refused connects
    engine.close()
