"""The chain-task policy: the shipped tiny Qwen3, warm-started further on the chain task.

The credit-assignment study (``benchmarks/credit_study.py``) needs a policy that writes the
chain task's long answers (:mod:`strace_ds.data.chain`) and is unsure exactly at their few
decisive results. :func:`build_chain_policy` takes the shipped tiny policy
(:func:`strace_ds.tiny.default_policy_dir`: it already does the small-number arithmetic, and
its tokenizer writes every digit as its own token) and fine-tunes it on chain answers written
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from strace_ds.data.chain import (
    ChainConfig,
    chain_dataset,
    chain_solution,
    parse_chain_spec,
    teacher_slips,
)
from strace_ds.data.synthetic import APPLY
from strace_ds.tiny import (
    BUILD_INFO,
    _is_build,
    accuracy_report,
    build_once,
    cache_root,
    default_policy_dir,
    encode_sft_example,
    file_sha256,
    sft_loop,
    single_thread,
)

CHAIN_BUILD_VERSION = 1
"""Bumped whenever the recipe changes, so old caches are not reused."""
ASSETS = Path(__file__).resolve().parent / "assets"
CHAIN_DIR = ASSETS / "tiny-qwen3-chain"
"""The default chain-task build (seed 0, ``--dataset chain``), shipped with the package."""
CHAIN_SHA256 = "f04b3d377c04cbe84202c67424726aa57e93b1fecf041b99edcb7a42bc5dec66"
"""sha256 of the shipped chain build's ``model.safetensors``."""
LONG_CHAIN_SPEC = "chain:decisive=5,filler=2"
"""The second task shape of the credit study: five decisive results, answers of ~185 tokens."""
LONG_CHAIN_DIR = ASSETS / "tiny-qwen3-chain-d5"
"""The build for :data:`LONG_CHAIN_SPEC`, shipped with the package."""
LONG_CHAIN_SHA256 = "b70a67903d288908773d0d2af85fa66d5243fb663eeaafcc4e5ff71d95aff13a"
"""sha256 of the long-chain build's ``model.safetensors``."""
LONG_CHAIN_MAX_NEW_TOKENS = 224
"""Answer cap of the long build's accuracy measurement (its answers run to ~195 tokens)."""


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
    max_new_tokens: int = 160
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


@dataclass(frozen=True)
class ShippedChainBuild:
    """A chain-task build shipped with the package: the recipe's config, where, and its pin."""

    spec: str
    """The ``--dataset`` spec whose problems it was warm-started on."""
    path: Path
    sha256: str
    """sha256 of its ``model.safetensors``."""
    max_new_tokens: int = ChainBuildConfig.max_new_tokens

    def build_config(self) -> ChainBuildConfig:
        return ChainBuildConfig(task=parse_chain_spec(self.spec).to_dict(),
                                max_new_tokens=self.max_new_tokens)  # fmt: skip


def shipped_chain_builds() -> list[ShippedChainBuild]:
    """The shipped builds, the default one first (read at call time: tests move the paths)."""
    return [ShippedChainBuild("chain", CHAIN_DIR, CHAIN_SHA256),
            ShippedChainBuild(LONG_CHAIN_SPEC, LONG_CHAIN_DIR, LONG_CHAIN_SHA256,
                              LONG_CHAIN_MAX_NEW_TOKENS)]  # fmt: skip


def regenerate_command(build: ShippedChainBuild) -> str:
    """The command that rebuilds ``build`` in place (then update its pinned sha256)."""
    extra = "" if build.spec == "chain" else f" --task {build.spec}"
    if build.max_new_tokens != ChainBuildConfig.max_new_tokens:
        extra += f" --max-new-tokens {build.max_new_tokens}"
    return f"python -m strace_ds.tiny_chain --out {build.path}{extra} --force"


def _problem_shape(cfg: ChainConfig) -> ChainConfig:
    """The fields that decide the problems (the teacher's slip rate only shapes a warm start)."""
    return replace(cfg, slip_rate=ChainConfig.slip_rate)


def shipped_chain_build(spec: str = "chain") -> ShippedChainBuild:
    """The shipped build whose problems ``spec`` draws, else the default build."""
    want = _problem_shape(parse_chain_spec(spec))
    builds = shipped_chain_builds()
    return next((b for b in builds if _problem_shape(parse_chain_spec(b.spec)) == want),
                builds[0])  # fmt: skip


def chain_policy_dir(spec: str = "chain") -> Path:
    """The shipped policy for the chain task ``spec`` (:func:`shipped_chain_build`); raises
    with the regeneration command if it is missing."""
    build = shipped_chain_build(spec)
    if not (_is_build(build.path) and (build.path / "model.safetensors").is_file()):
        raise FileNotFoundError(
            f"the shipped chain-task policy at {build.path} is missing or incomplete; reinstall "
            f"strace_ds or regenerate it with `{regenerate_command(build)}`"
        )
    return build.path


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
    return build_once(out, cfg.digest(), lambda tmp: _build_into(tmp, cfg), force,
                      "build_chain_policy")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m strace_ds.tiny_chain",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--out", default=None, help="model directory (default: a cache entry)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sft-steps", type=int, default=ChainBuildConfig.sft_steps)
    p.add_argument("--task", default="chain",
                   help="the task and teacher, as --dataset spells it (chain:slip_rate=0.3,...)")
    p.add_argument("--max-new-tokens", type=int, default=ChainBuildConfig.max_new_tokens,
                   help="answer cap of the accuracy measurement (raise it for longer chains)")
    p.add_argument("--force", action="store_true", help="rebuild even if a build exists")
    args = p.parse_args(argv)
    task = parse_chain_spec(args.task).to_dict()
    cfg = ChainBuildConfig(seed=args.seed, sft_steps=args.sft_steps, task=task,
                           max_new_tokens=args.max_new_tokens)
    out = build_chain_policy(args.out, cfg, force=args.force)
    print(out)
    print((out / BUILD_INFO).read_text(), end="")


if __name__ == "__main__":
    main()
