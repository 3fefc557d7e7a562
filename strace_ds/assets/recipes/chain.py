"""The chain-task policy: the shipped tiny Qwen3, warm-started further on the chain task.

The credit-assignment study (``benchmarks/credit_study.py``) needs a policy that writes the
chain task's long answers (:mod:`strace_ds.data.chain`) and is unsure exactly at their few
decisive results. :func:`build_chain_policy` takes the shipped tiny policy
(:func:`strace_ds.assets.default_policy_dir`: it already does the small-number arithmetic, and its
tokenizer writes every digit as its own token) and fine-tunes it on chain answers written
by a teacher that slips at each decisive result with probability ``ChainConfig.slip_rate``
(later lines consistent with the slip) and picks each filler line's wording at random. Sampled
accuracy at temperature 1 then starts in 10-40%: RL has signal in most groups and a long way to
go, and what it has to learn is a handful of tokens per answer.

As for the default policy, the builds that the study uses ship with the package (one per task
shape in :func:`shipped_chain_builds`, each pinned by its sha256) because float reductions
differ between machines; this module is the recipe that regenerates them (the command of each
is in :func:`regenerate_command`, then update the pinned sha256). Each ``BUILD_INFO.json``
records the config and the measured accuracies. :func:`chain_policy_dir` picks the build whose
problems a ``--dataset chain:...`` spec draws (every field but the teacher's ``slip_rate``), and
the default build for a shape that has none.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from strace_ds.assets import (  # noqa: F401 (re-exported: the shipped chain builds)
    BUILD_INFO,
    CHAIN_DIR,
    CHAIN_MAX_NEW_TOKENS,
    CHAIN_SHA256,
    LONG_CHAIN_DIR,
    LONG_CHAIN_MAX_NEW_TOKENS,
    LONG_CHAIN_SHA256,
    LONG_CHAIN_SPEC,
    ShippedChainBuild,
    chain_policy_dir,
    default_policy_dir,
    is_build,
    regenerate_command,
    shipped_chain_build,
    shipped_chain_builds,
)
from strace_ds.assets.recipes.arithmetic import (
    accuracy_report,
    build_once,
    cache_root,
    encode_sft_example,
    file_sha256,
    sft_loop,
    single_thread,
)
from strace_ds.data.arithmetic import APPLY
from strace_ds.data.chain import (
    ChainConfig,
    chain_dataset,
    chain_solution,
    parse_chain_spec,
    teacher_slips,
)

CHAIN_BUILD_VERSION = 1
"""Bumped whenever the recipe changes, so old caches are not reused."""


@dataclass(frozen=True)
class ChainBuildConfig:
    """Everything that determines the chain build (its hash names a cache entry)."""

    seed: int = 0
    """Seeds the teacher's slips and wordings, the data order and the accuracy measurement."""
    sft_steps: int = 600
    """Fine-tuning steps on top of the shipped policy."""
    sft_batch_size: int = 32
    """Answers per step (each problem seen once)."""
    sft_lr: float = 1e-3
    """Peak AdamW learning rate (warm-up, cosine decay to 10%)."""
    task: dict[str, Any] = field(default_factory=lambda: ChainConfig().to_dict())
    """The :class:`ChainConfig` (as a dict) of the problems and of the teacher's slips."""
    max_new_tokens: int = CHAIN_MAX_NEW_TOKENS
    """Answer cap of the accuracy measurement."""
    eval_n: int = 200
    """Held-out problems sampled for ``BUILD_INFO.json``."""

    def __post_init__(self) -> None:
        for name in ("sft_steps", "sft_batch_size", "max_new_tokens", "eval_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"ChainBuildConfig.{name} must be >= 1, got {getattr(self, name)}")
        ChainConfig.from_dict(self.task)

    def digest(self) -> str:
        blob = json.dumps({"v": CHAIN_BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def build_config(build: ShippedChainBuild) -> ChainBuildConfig:
    """The recipe's config of the shipped ``build`` (its digest is in its ``BUILD_INFO.json``)."""
    return ChainBuildConfig(task=parse_chain_spec(build.spec).to_dict(),
                            max_new_tokens=build.max_new_tokens)  # fmt: skip


def teacher_targets(examples: list, task: ChainConfig, seed: int) -> list[str]:
    """The warm start's targets: each problem's chain with the teacher's slips and wordings."""
    rng = random.Random(f"strace_ds.tiny_chain.teacher/{seed}")
    out = []
    for ex in examples:
        ops = [tuple(o) for o in ex.meta["ops"]]
        slips = teacher_slips(len(ops), task.slip_rate, rng)
        # a slip may not take the running value below zero: the task never does
        value = ex.meta["start"]
        for i, (op, b) in enumerate(ops):
            value = APPLY[op](value, b)
            if value + slips[i] < 0:
                slips[i] = 0
            value += slips[i]
        out.append(chain_solution(ex.meta["start"], ops, task, rng, slips)[1])
    return out


def _build_into(tmp: Path, cfg: ChainBuildConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    task = ChainConfig.from_dict(cfg.task)
    base = default_policy_dir()
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(base)
        n = cfg.sft_steps * cfg.sft_batch_size
        train = chain_dataset("train", size=n, seed=cfg.seed, config=task).examples
        targets = teacher_targets(train, task, cfg.seed)
        rows = [encode_sft_example(tokenizer, ex, t) for ex, t in zip(train, targets)]
        losses = sft_loop(model, rows, cfg.sft_steps, cfg.sft_batch_size, cfg.sft_lr,
                          tokenizer.pad_token_id, desc="chain SFT")  # fmt: skip
        test = chain_dataset("test", size=cfg.eval_n, seed=cfg.seed, config=task).examples
        sampled = accuracy_report(model, tokenizer, test, 1.0, cfg.seed, cfg.max_new_tokens)
        greedy = accuracy_report(model, tokenizer, test, 0.0, cfg.seed, cfg.max_new_tokens)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name in ("config.json", "tokenizer_config.json", "generation_config.json"):
        if (base / name).is_file():  # the base's transformers-4-compatible forms
            shutil.copyfile(base / name, tmp / name)
    info = {
        "build_version": CHAIN_BUILD_VERSION,
        "digest": cfg.digest(),
        "base_sha256": file_sha256(base / "model.safetensors"),
        "config": asdict(cfg),
        "sft_final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "sampled_accuracy_t1": sampled["accuracy"],
        "greedy_accuracy": greedy["accuracy"],
        "boxed_rate_t1": sampled["boxed_rate"],
        "mean_answer_tokens_t1": round(sampled["mean_answer_tokens"], 2),
        "eval_n": cfg.eval_n,
        "torch_version": torch.__version__,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def build_chain_policy(
    out_dir: str | Path | None = None, cfg: ChainBuildConfig | None = None, force: bool = False
) -> Path:
    """Build (or reuse) the chain-task policy into ``out_dir`` (default: a cache entry named
    by the config hash), published atomically; returns its directory."""
    cfg = cfg or ChainBuildConfig()
    out = Path(out_dir) if out_dir is not None else cache_root() / f"tiny-chain-{cfg.digest()}"
    return build_once(
        out, cfg.digest(), lambda tmp: _build_into(tmp, cfg), force, "build_chain_policy"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m strace_ds.assets.recipes.chain",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--out", default=None, help="model directory (default: a cache entry)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sft-steps", type=int, default=ChainBuildConfig.sft_steps)
    p.add_argument(
        "--task",
        default="chain",
        help="the task and teacher, as --dataset spells it (chain:slip_rate=0.3,...)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=ChainBuildConfig.max_new_tokens,
        help="answer cap of the accuracy measurement (raise it for longer chains)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if a build exists")
    args = p.parse_args(argv)
    task = parse_chain_spec(args.task).to_dict()
    cfg = ChainBuildConfig(
        seed=args.seed, sft_steps=args.sft_steps, task=task, max_new_tokens=args.max_new_tokens
    )
    out = build_chain_policy(args.out, cfg, force=args.force)
    print(out)
    print((out / BUILD_INFO).read_text(), end="")


if __name__ == "__main__":
    main()
