"""SGLang rollout engine: unit tests against a fake HTTP server. They need only the trainer's
venv; the tests against a REAL SGLang server are ``tests/sglang/test_sglang_server_real.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.fake_sglang import FakeSGLang
from helpers.fake_sglang import sglang_answer as _answer
from safetensors.torch import load_file

from strace_ds.rollout import build_rollout_engine
from strace_ds.rollout.base import RolloutEngine, SamplingParams
from strace_ds.rollout.sglang import (
    SGLangRolloutEngine,
    SGLangServerError,
    StaleWeightsError,
    parse_generate_response,
    row_seed,
)
from strace_ds.rollout.sglang.server import SGLangServer
from strace_ds.rollout.sglang.server import SGLangServerError as StartError
from strace_ds.rollout.sglang.weights import publish_atomically, write_hf_checkpoint

REPO = Path(__file__).resolve().parents[3]

# --------------------------------------------------------------------------- fake server


def _engine(url: str, tmp_path: Path, **kw: Any) -> SGLangRolloutEngine:
    kw = {"max_retries": 2, "backoff_s": 0.05, "timeout_s": 5.0, **kw}
    return SGLangRolloutEngine(url, tmp_path / "weights", **kw)


# --------------------------------------------------------------------------- unit tests


def test_parse_generate_response_maps_fields_and_checks_them() -> None:
    body = [_answer([5, 6], "3", "stop"), _answer([7], "3", "length")]
    out = parse_generate_response(body, 2, "http://x")
    assert [a.token_ids for a in out] == [[5, 6], [7]]
    assert out[0].logprobs == pytest.approx([-0.5, -0.6])
    assert [a.finish_reason for a in out] == ["stop", "length"]
    assert out[1].weight_version == "3"
    # A single answer arrives as a dict, not a list.
    assert parse_generate_response(_answer([1]), 1)[0].token_ids == [1]
    with pytest.raises(SGLangServerError, match="returned 1 answers, expected 2"):
        parse_generate_response([_answer([1])], 2, "http://x")
    broken = _answer([5, 6])
    broken["meta_info"]["output_token_logprobs"][1][1] = 9
    with pytest.raises(SGLangServerError, match="do not match output_ids"):
        parse_generate_response(broken, 1)
    missing = _answer([5])
    del missing["meta_info"]["output_token_logprobs"]
    with pytest.raises(SGLangServerError, match="return_logprob"):
        parse_generate_response(missing, 1)
    with pytest.raises(SGLangServerError, match="unknown finish_reason"):
        parse_generate_response(_answer([5], reason="weird"), 1)


def test_row_seed_is_stable_distinct_and_in_range() -> None:
    seeds = [row_seed(7, r) for r in range(1000)]
    assert seeds == [row_seed(7, r) for r in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= s < 2**31 for s in seeds)
    assert row_seed(8, 0) != row_seed(7, 0)


def test_engine_satisfies_protocol_and_registry(fake: FakeSGLang, tmp_path: Path) -> None:
    fake.version = "default"  # what a server started without --weight-version reports
    engine = build_rollout_engine("sglang", urls=fake.url, weights_dir=tmp_path / "w",
                                  weight_version=4)
    assert isinstance(engine, RolloutEngine)
    # The fresh server is labelled with the engine's version, so its answers are accepted.
    assert ("POST", "/update_weight_version", {"new_version": "4", "abort_all_requests": False}) \
        in fake.requests
    assert engine.generate([[1]], 1, SamplingParams()).weight_version == 4
    engine.close()


def test_group_layout_seeds_and_spread_over_servers(fake: FakeSGLang, tmp_path: Path) -> None:
    other = FakeSGLang()
    try:
        engine = _engine(f"{fake.url},{other.url}", tmp_path)
        prompts = [[1, 2], [2], [3, 4, 5]]
        gen = engine.generate(prompts, 2, SamplingParams(max_new_tokens=4, top_k=5))
        assert gen.prompt_index == [0, 0, 1, 1, 2, 2]
        assert gen.token_ids == [[101], [102], [102], [103], [103], [104]]
        assert gen.weight_version == 0 and len(gen.logprobs[0]) == 1
        sent = [b for s in (fake, other) for (_, path, b) in s.requests if path == "/generate"]
        assert sorted(len(s.requests) > 0 for s in (fake, other)) == [True, True]
        assert all(b["return_logprob"] and b["sampling_params"]["n"] == 2 for b in sent)
        assert sent[0]["sampling_params"]["top_k"] == 5
        # With a seed: n copies of the prompt, n=1 each, distinct per-row seeds.
        with pytest.warns(UserWarning, match="NOT reproducible"):
            engine.generate([[1], [2]], 3, SamplingParams(max_new_tokens=4, seed=11))
        seeded = [b for s in (fake, other) for (_, path, b) in s.requests
                  if path == "/generate" and isinstance(b["sampling_params"], list)]
        seeds = sorted(p["sampling_seed"] for b in seeded for p in b["sampling_params"])
        assert seeds == sorted(row_seed(11, r) for r in range(6))
        assert all(len(b["input_ids"]) == 3 and p["n"] == 1
                   for b in seeded for p in b["sampling_params"])
        engine.close()
    finally:
        other.close()


def test_stale_weight_version_raises(fake: FakeSGLang, tmp_path: Path) -> None:
    engine = _engine(fake.url, tmp_path)
    fake.version = "7"  # another client moved the server on
    with pytest.raises(StaleWeightsError, match=r"weight_version '7', expected '0'"):
        engine.generate([[1]], 1, SamplingParams())
    engine.close()


def test_retry_with_backoff_then_success(fake: FakeSGLang, tmp_path: Path) -> None:
    engine = _engine(fake.url, tmp_path, max_retries=3, backoff_s=0.1)
    fake.script["/generate"] = [(503, {"error": "busy"}), (503, {"error": "busy"}),
                                (200, [_answer([9])])]
    start = time.monotonic()
    gen = engine.generate([[1]], 1, SamplingParams())
    elapsed = time.monotonic() - start
    assert gen.token_ids == [[9]]
    assert sum(p == "/generate" for _, p, _ in fake.requests) == 3
    assert 0.3 - 0.02 <= elapsed < 2.0  # backoffs 0.1 + 0.2
    engine.close()


def test_retries_are_bounded_and_error_names_url(fake: FakeSGLang, tmp_path: Path) -> None:
    engine = _engine(fake.url, tmp_path, max_retries=2, backoff_s=0.05)
    fake.script["/generate"] = [(503, {"error": "busy"})]
    with pytest.raises(SGLangServerError, match=f"{fake.url} failed POST /generate 3 times"):
        engine.generate([[1]], 1, SamplingParams())
    assert sum(p == "/generate" for _, p, _ in fake.requests) == 3
    # A non-retryable error fails at once with the server's message.
    fake.script["/generate"] = [(400, {"error": "max_new_tokens too large"})]
    before = len(fake.requests)
    with pytest.raises(SGLangServerError, match="HTTP 400.*max_new_tokens too large"):
        engine.generate([[1]], 1, SamplingParams())
    assert len(fake.requests) == before + 1
    engine.close()


def test_constructor_names_unreachable_server(tmp_path: Path) -> None:
    server = FakeSGLang()
    url = server.url
    server.close()  # nothing listens there any more
    start = time.monotonic()
    with pytest.raises(SGLangServerError, match=f"no healthy SGLang server at\n  {url}"):
        _engine(url, tmp_path)
    assert time.monotonic() - start < 10


def test_sync_disk_checks_success_and_prunes(fake: FakeSGLang, tmp_path: Path) -> None:
    engine = _engine(fake.url, tmp_path, keep_versions=2)
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}
    fake.script["/update_weights_from_disk"] = [(200, {"success": True, "message": "ok"})]
    for v in (1, 2, 3):
        engine.sync_weights(iter(tensors.items()), v)
        assert engine.weight_version == v and engine.last_sync_s is not None
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["v2", "v3"]
    loaded = load_file(tmp_path / "weights" / "v3" / "model.safetensors")
    assert torch.equal(loaded["a"], tensors["a"])
    sync = [b for _, p, b in fake.requests if p == "/update_weights_from_disk"][-1]
    assert sync["weight_version"] == "3"
    assert sync["model_path"] == str((tmp_path / "weights" / "v3").resolve())
    # success=false is an error naming the URL, and the version becomes unknown (None).
    fake.script["/update_weights_from_disk"] = [(400, {"success": False, "message": "bad"})]
    with pytest.raises(SGLangServerError, match=f"{fake.url}.*bad"):
        engine.sync_weights(iter(tensors.items()), 4)
    assert engine.weight_version is None
    engine.close()


def test_write_hf_checkpoint_streams_shards_with_index(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "tokenizer.json").write_text("{}")
    (base / "model.safetensors").write_text("old weights, never copied")
    consumed: list[str] = []

    def stream() -> Iterator[tuple[str, torch.Tensor]]:
        for k in range(5):
            consumed.append(f"w{k}")
            yield f"w{k}", torch.full((256,), float(k))  # 1 KiB each in float32

    out = write_hf_checkpoint(stream(), tmp_path / "ckpt", base, shard_bytes=2048)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "model-00001-of-00003.safetensors",
                     "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
                     "model.safetensors.index.json", "tokenizer.json"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 1024
    assert index["weight_map"]["w4"] == "model-00003-of-00003.safetensors"
    for name, file in index["weight_map"].items():
        assert torch.equal(load_file(out / file)[name], torch.full((256,), float(name[1:])))
    # Aliased tensors (tied embeddings) are written as copies; duplicates are refused.
    emb = torch.randn(4, 2)
    tied = write_hf_checkpoint(iter([("e", emb), ("h", emb)]), tmp_path / "tied")
    assert torch.equal(load_file(tied / "model.safetensors")["h"], emb)
    with pytest.raises(ValueError, match="given twice"):
        write_hf_checkpoint(iter([("e", emb), ("e", emb)]), tmp_path / "dup")


def test_publish_atomically_replaces(tmp_path: Path) -> None:
    final, tmp = tmp_path / "v1", tmp_path / ".v1.tmp"
    final.mkdir()
    (final / "old").write_text("old")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    publish_atomically(tmp, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_server_launcher_reports_log_tail_when_server_dies(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'boom: no such model' >&2\nexit 3\n")
    fake_python.chmod(0o755)
    server = SGLangServer(fake_python, "/nonexistent", device="cpu", log_path=tmp_path / "log")
    assert "--skip-tokenizer-init" in server.command() and "--sleep-on-idle" in server.command()
    with pytest.raises(StartError, match=r"(?s)exited with code 3.*boom: no such model"):
        server.start().wait_healthy(timeout_s=30)
    server.stop()
    overridden = SGLangServer(fake_python, "m", extra_args=["--dtype", "bfloat16"]).command()
    assert overridden.count("--dtype") == 1 and overridden[-1] == "bfloat16"


def test_cpu_stub_functions_all_raise() -> None:
    # The sgl_kernel stub (tests/sglang_cpu_stub) only exists so SGLang imports on CPU; any
    # call must fail loudly. Imported in a subprocess to keep it out of this interpreter.
    import subprocess
    import sys

    code = (
        "import sgl_kernel\n"
        "assert sgl_kernel.__version__.endswith('cpu-stub')\n"
        "assert sgl_kernel._NAMES\n"
        "for name in sgl_kernel._NAMES:\n"
        "    try:\n"
        "        getattr(sgl_kernel, name)(1, x=2)\n"
        "    except NotImplementedError as e:\n"
        "        assert name in str(e) and 'stub' in str(e)\n"
        "    else:\n"
        "        raise SystemExit(name + ' did not raise')\n"
        "print(len(sgl_kernel._NAMES))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "sglang_cpu_stub"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 1
