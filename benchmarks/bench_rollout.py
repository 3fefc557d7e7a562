"""Rollout throughput and weight-sync time: SGLang server vs the in-process engine.

    python -m benchmarks.bench_rollout [--sglang-python .venv-sglang/bin/python] \\
        [--prompts 8] [--n 8] [--max-new-tokens 32] [--no-big] [--out FILE.md]

Measures, on the same tiny policy (:func:`strace_ds.assets.default_policy_dir`) and the
same prompts (the synthetic arithmetic task in the chat template):

1. answer tokens per second of :class:`~strace_ds.rollout.sglang.SGLangRolloutEngine` (a real
   SGLang server on this machine) and of :class:`~strace_ds.rollout.hf.HFRolloutEngine`
   (skipped when that module is absent), temperature 1, best of ``--repeats`` after a warm-up;
2. ``sync_weights`` time for the tiny policy (SGLang disk and tensor paths, in-process copy);
3. the same for a randomly initialised Qwen3-shaped model of ~0.5B parameters (SGLang disk path
   and in-process copy; ``--no-big`` skips it): float32, as the CPU server runs.

Results go to a markdown file with the machine's description. Not a test: numbers on a shared
2-core machine move with the load (the load average is recorded).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from strace_ds.rollout.base import SamplingParams
from strace_ds.rollout.sglang import SGLangRolloutEngine
from strace_ds.rollout.sglang.server import SGLangServer

REPO = Path(__file__).resolve().parents[1]
BIG_SHAPE = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=22,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)
"""Qwen3-0.6B's widths with 22 instead of 28 layers: ~0.50B parameters (tied embeddings)."""


def tiny_prompts(policy_dir: Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from strace_ds.assets.recipes.arithmetic import chat_prompt
    from strace_ds.data.arithmetic import arithmetic_dataset

    tok = AutoTokenizer.from_pretrained(policy_dir)
    examples = arithmetic_dataset("test", size=count, seed=0).examples
    return [tok(chat_prompt(tok, ex.prompt), add_special_tokens=False).input_ids
            for ex in examples]


def tokens_per_s(engine: Any, prompts: list[list[int]], n: int, sampling: SamplingParams,
                 repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` answer tokens/s after one warm-up call, and mean answer length."""
    engine.generate(prompts[:2], n, sampling)
    best, mean_len = 0.0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        gen = engine.generate(prompts, n, sampling)
        elapsed = time.perf_counter() - start
        tokens = sum(len(t) for t in gen.token_ids)
        best = max(best, tokens / elapsed)
        mean_len = tokens / len(gen)
    return best, mean_len


def sync_time(engine: Any, named: Callable[[], Any], first_version: int, repeats: int) -> float:
    """Median seconds of ``engine.sync_weights`` over ``repeats`` versions (each run printed,
    with the SGLang engine's write/load breakdown when it has one)."""
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        engine.sync_weights(named(), first_version + k)
        times.append(time.perf_counter() - start)
        parts = getattr(engine, "last_sync_breakdown", {})
        print(f"  {type(engine).__name__} sync {k}: {times[-1]:.3f} s "
              + " ".join(f"{name} {v:.3f} s" for name, v in parts.items()), flush=True)
    return statistics.median(times)


def hf_engine_class() -> Any:
    try:
        from strace_ds.rollout.hf import HFRolloutEngine
    except ImportError:
        return None
    return HFRolloutEngine


def bench_tiny(args: argparse.Namespace, rows: list[str], tmp: Path) -> None:
    from transformers import AutoModelForCausalLM

    from strace_ds.assets import default_policy_dir

    policy_dir = default_policy_dir()
    prompts = tiny_prompts(policy_dir, args.prompts)
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())

    def named() -> Any:
        return ((n, p.detach()) for n, p in model.named_parameters())

    label = f"tiny policy ({params / 1e6:.2f}M params), {len(prompts)} prompts x n={args.n}"
    with SGLangServer(args.sglang_python, policy_dir, device="cpu") as server:
        engine = SGLangRolloutEngine(server.url, tmp / "w-tiny", timeout_s=600)
        tps, mean_len = tokens_per_s(engine, prompts, args.n, sampling, args.repeats)
        rows.append(f"| {label} | SGLang server (CPU) | generate | {tps:,.0f} tok/s "
                    f"(mean answer {mean_len:.1f} tokens) |")
        disk = sync_time(engine, named, 1, args.repeats)
        b = engine.last_sync_breakdown
        rows.append(f"| tiny policy | SGLang server (CPU) | sync_weights disk | median "
                    f"{disk * 1e3:.0f} ms (last: write {b['write_s'] * 1e3:.0f} ms + load "
                    f"{b['load_s'] * 1e3:.0f} ms) |")
        engine.close()
        engine = SGLangRolloutEngine(server.url, tmp / "w-tiny-t", sync_mode="tensor",
                                     weight_version=args.repeats)
        tensor = sync_time(engine, named, args.repeats + 1, args.repeats)
        rows.append(f"| tiny policy | SGLang server (CPU) | sync_weights tensor | "
                    f"{tensor * 1e3:.0f} ms |")
        engine.close()
    hf_cls = hf_engine_class()
    if hf_cls is None:
        rows.append(f"| {label} | in-process (HFRolloutEngine) | generate | module absent |")
        return
    engine = hf_cls(policy_dir)
    tps, mean_len = tokens_per_s(engine, prompts, args.n, sampling, args.repeats)
    rows.append(f"| {label} | in-process (HFRolloutEngine) | generate | {tps:,.0f} tok/s "
                f"(mean answer {mean_len:.1f} tokens) |")
    copy_s = sync_time(engine, named, 1, args.repeats)
    rows.append(f"| tiny policy | in-process (HFRolloutEngine) | sync_weights copy | "
                f"{copy_s * 1e3:.1f} ms |")
    engine.close()


def bench_big(args: argparse.Namespace, rows: list[str], tmp: Path) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**BIG_SHAPE, bos_token_id=0, eos_token_id=1,
                                         pad_token_id=0)).float().eval()
    params = sum(p.numel() for p in model.parameters())
    model_dir = tmp / "big"
    start = time.perf_counter()
    model.save_pretrained(model_dir)
    save_s = time.perf_counter() - start
    gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30

    def named() -> Any:
        return ((n, p.detach()) for n, p in model.named_parameters())

    label = f"random Qwen3-shaped {params / 1e9:.2f}B params ({gib:.1f} GiB fp32)"
    rows.append(f"| {label} | (reference) | `save_pretrained` | {save_s:.1f} s |")
    with SGLangServer(args.sglang_python, model_dir, device="cpu", startup_timeout_s=1200) as srv:
        engine = SGLangRolloutEngine(srv.url, tmp / "w-big", timeout_s=1200, keep_versions=1)
        disk = sync_time(engine, named, 1, 3)
        b = engine.last_sync_breakdown
        rows.append(f"| {label} | SGLang server (CPU) | sync_weights disk | median {disk:.1f} s "
                    f"of 3 (last: write {b['write_s']:.1f} s + load {b['load_s']:.1f} s) |")
        engine.close()
    gc.collect()
    hf_cls = hf_engine_class()
    if hf_cls is not None:
        engine = hf_cls(model, eos_token_id=1, pad_token_id=0)
        copy_s = sync_time(engine, named, 1, 3)
        rows.append(f"| {label} | in-process (HFRolloutEngine) | sync_weights copy | "
                    f"median {copy_s:.2f} s of 3 |")
        engine.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sglang-python", default=os.environ.get("STRACE_DS_SGLANG_PYTHON")
                   or str(REPO / ".venv-sglang" / "bin" / "python"))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-big", action="store_true", help="skip the ~0.5B weight-sync run")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results_rollout.md"))
    args = p.parse_args()
    if not Path(args.sglang_python).exists():
        raise SystemExit(f"no SGLang python at {args.sglang_python}: run "
                         "scripts/setup_sglang_env.sh --cpu first")
    rows: list[str] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        bench_tiny(args, rows, Path(tmp))
        if not args.no_big:
            bench_big(args, rows, Path(tmp))
    load_after = os.getloadavg()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"torch {torch.__version__} (trainer side), load average "
               f"{load_before[0]:.1f} before / {load_after[0]:.1f} after")
    text = "\n".join([
        "# Rollout benchmark (`benchmarks/bench_rollout.py`)",
        "",
        f"Machine: {machine}. Command: `python -m benchmarks.bench_rollout --prompts "
        f"{args.prompts} --n {args.n} --max-new-tokens {args.max_new_tokens} --repeats "
        f"{args.repeats}{' --no-big' if args.no_big else ''}`. Generation: temperature 1, "
        "best of the repeats after a warm-up; sync: median over versions.",
        "",
        "| workload | engine | what | result |",
        "|---|---|---|---|",
        *rows,
        "",
    ])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
