"""The embedded default policy: a tiny Qwen3 model and tokenizer built locally, SFT-warm-started.

:func:`build_tiny_policy` makes, from a seed and in a few minutes on two CPU cores, a model
directory that ``AutoModelForCausalLM`` / ``AutoTokenizer`` (and an SGLang server) load
like any Hugging Face checkpoint:

1. a byte-level BPE tokenizer trained with ``tokenizers`` on the synthetic arithmetic task
   (:mod:`strace_ds.data.arithmetic`), Qwen's pre-tokenizer (every digit its own token), the
   ChatML special tokens ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (EOS)
   and a Qwen-style chat template;
2. a small ``Qwen3ForCausalLM`` (standard config: nothing SGLang would not serve);
3. a short supervised warm start on the reference solutions (loss on answer tokens only)
   written by a deliberately sloppy teacher: 60% of its targets state the final answer
   without ``\\boxed{}`` (``"3 + 5 = 8. The answer is 8."``), which the verifier scores 0.

Why the sloppy teacher. Measured on this model: the arithmetic itself is learnt in a
steep phase of SFT, and RL barely moves it in a CPU budget (GRPO on a plain 300-step
warm start, 30 steps of 32x8 answers: accuracy flat at lr 3e-5, falling at 1e-4 to 2e-4,
collapsing at 1e-3).
A policy that mostly *knows* the answer but often fails the verifiable format is what
base models look like to RLVR, and RL fixes it fast: with the default build, 30 GRPO
steps (32 prompts x 8 answers, AdamW lr 1e-4) raised held-out accuracy from 0.28 to 0.71
at temperature 1 and from 0.00 to 0.86 greedy (greedy starts at ~0 because the unboxed
form is the mode at the decision token). ``BUILD_INFO.json`` records ``boxed_rate_t1``
and ``accuracy_when_boxed_t1`` so the two parts (format, arithmetic) can be told apart.
Sampled accuracy at temperature 1 lands in 20-60%: RL has both signal (nearly every group
holds a right answer) and room to improve.

The default build ships with the package (``strace_ds/assets/tiny-qwen3``, 1.8 MB,
:func:`default_policy_dir`): float reductions differ between CPUs, thread counts and library
versions, so a build is not the same artefact on every machine, and the main command, the
tests and the notebooks must all see one. This module stays the recipe that regenerates it
(``python -m strace_ds.assets.recipes.arithmetic --out strace_ds/assets/tiny-qwen3
--force``, then update :data:`~strace_ds.assets.SHIPPED_SHA256`); a test checks the shipped
copy matches the recipe's config, its recorded hash and its documented sampled accuracy.

Other builds (other seeds, tests' short builds) are cached under ``$STRACE_DS_CACHE``
(default ``~/.cache/strace_ds``) in ``tiny-qwen3-<hash of the build config>`` and written
atomically (temporary directory, then ``os.rename``), so a killed build never leaves a half
cache and concurrent ranks agree. ``BUILD_INFO.json`` in it records the config, sizes, build
time and measured accuracies.

CLI: ``python -m strace_ds.assets.recipes.arithmetic --out DIR [--seed S] [--sft-steps N]
[--force]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from strace_ds.assets import (  # noqa: F401 (re-exported: the recipe's shipped build)
    BUILD_INFO,
    SHIPPED_DIR,
    SHIPPED_SHA256,
    default_policy_dir,
    is_build,
)
from strace_ds.cache import cache_root
from strace_ds.data.arithmetic import ArithmeticConfig, arithmetic_dataset
from strace_ds.data.types import PromptExample
from strace_ds.storage.publish import publish_dir

BUILD_VERSION = 3
"""Bumped whenever the build recipe changes, so old caches are not reused."""
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""Qwen's ChatML layout without tools/thinking: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``."""
# Qwen2/Qwen3's split pattern: words with their leading space, one token per digit.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BOXED = re.compile(r"\\boxed\{")
_BOXED_END = re.compile(r"\\boxed\{(\d+)\}\.$")


@dataclass(frozen=True)
class TinyBuildConfig:
    """Everything that determines the built directory (its hash names the cache entry)."""

    seed: int = 0
    """Seeds tokenizer corpus, weight init, SFT data order and the accuracy measurement."""
    sft_steps: int = 500
    """Optimizer steps of the warm start: the arithmetic is mostly learnt by ~500 (a 400-step
    build got only ~0.45 of its boxed answers right); each 100 steps cost ~30 s of CPU."""
    sft_batch_size: int = 64
    """Sequences per SFT step (each problem is seen once)."""
    sft_lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    vocab_size: int = 512
    """Upper bound for the BPE vocabulary (256 byte tokens + merges + 3 special tokens)."""
    hidden_size: int = 128
    """Model width."""
    num_hidden_layers: int = 2
    """Transformer blocks."""
    num_attention_heads: int = 4
    """Query heads (``head_dim * heads == hidden_size``)."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention as in Qwen3)."""
    intermediate_size: int = 384
    """SwiGLU hidden width."""
    task: dict[str, Any] = field(default_factory=lambda: ArithmeticConfig().to_dict())
    """The :class:`ArithmeticConfig` of the task, as a dict."""
    sft_unboxed_rate: float = 0.6
    """Share of SFT targets stating the answer without ``\\boxed{}`` (:func:`teacher_solution`)."""
    eval_n: int = 200
    """Held-out problems sampled for ``BUILD_INFO.json``."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sft_unboxed_rate < 1.0:
            raise ValueError(
                f"TinyBuildConfig.sft_unboxed_rate must be in [0, 1), got {self.sft_unboxed_rate}"
            )
        for name in (
            "sft_steps",
            "sft_batch_size",
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "eval_n",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"TinyBuildConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("TinyBuildConfig.hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "TinyBuildConfig.num_attention_heads must be divisible by num_key_value_heads"
            )

    def digest(self) -> str:
        """Short stable hash of the config and the recipe version."""
        blob = json.dumps({"v": BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the caller's count.

    Why: the build is then bit-identical on any machine (float reductions depend on the
    thread count), and a 128-wide model gains nothing from a second thread; on the shared
    2-core box, two OpenMP threads spin-waiting under contention made SFT steps 3-5x slower
    and burnt 4x the CPU.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- tokenizer
def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it with ChatML specials and template.

    Byte-level, so any string round-trips exactly (unseen characters cost more tokens,
    they never become ``<unk>``); Qwen's split pattern, so every digit is its own token.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def chat_prompt(tokenizer: PreTrainedTokenizerFast, user_message: str) -> str:
    """The rendered ChatML prompt for one user message, ending ``<|im_start|>assistant\\n``."""
    messages = [{"role": "user", "content": user_message}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _tokenizer_corpus(examples: list[PromptExample]) -> list[str]:
    """Training text for the BPE: role names plus every prompt and solution."""
    return ["user\n", "assistant\n"] * 50 + [
        t for ex in examples for t in (ex.prompt, ex.meta["solution"])
    ]


# --------------------------------------------------------------------------- model + SFT
def build_model(cfg: TinyBuildConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen3ForCausalLM:
    """A freshly initialised Qwen3 causal LM sized by ``cfg`` (float32, tied embeddings)."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3ForCausalLM(config).float()


def teacher_solution(ex: PromptExample, unboxed_rate: float, rng: random.Random) -> str:
    """The SFT target for ``ex``: ``meta["solution"]``, or with probability ``unboxed_rate``
    the same solution with its final answer stated without ``\\boxed{}``
    (``"3 + 5 = 8. The answer is 8."``), which the verifier scores 0.
    """
    text = ex.meta["solution"]
    return _BOXED_END.sub(r"\1.", text) if rng.random() < unboxed_rate else text


def encode_sft_example(
    tokenizer: PreTrainedTokenizerFast, ex: PromptExample, solution: str | None = None
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: chat prompt + solution + ``<|im_end|>``; prompt labels -100.

    ``solution`` defaults to ``ex.meta["solution"]``.
    """
    prompt_ids = tokenizer(chat_prompt(tokenizer, ex.prompt), add_special_tokens=False).input_ids
    target = ex.meta["solution"] if solution is None else solution
    answer_ids = tokenizer(target + IM_END, add_special_tokens=False).input_ids
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask``, ``labels``, each ``[B, T]``."""
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = (
            torch.tensor(x),
            torch.tensor(y),
            1,
        )
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run_sft(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    examples: list[PromptExample],
    cfg: TinyBuildConfig,
) -> list[float]:
    """Supervised warm start, one pass over ``examples`` in batches; returns per-step losses.

    Loss is the mean token cross-entropy over answer tokens (``<|im_end|>`` included).
    """
    if len(examples) < cfg.sft_steps * cfg.sft_batch_size:
        raise ValueError(
            f"run_sft: examples holds {len(examples)} problems, fewer than sft_steps * "
            f"sft_batch_size = {cfg.sft_steps * cfg.sft_batch_size}; pass more or fewer steps"
        )
    rng = random.Random(f"strace_ds.tiny.teacher/{cfg.seed}")
    targets = [teacher_solution(ex, cfg.sft_unboxed_rate, rng) for ex in examples]
    rows = [encode_sft_example(tokenizer, ex, t) for ex, t in zip(examples, targets)]
    return sft_loop(
        model, rows, cfg.sft_steps, cfg.sft_batch_size, cfg.sft_lr, tokenizer.pad_token_id
    )


def sft_loop(
    model: Qwen3ForCausalLM,
    rows: list[tuple[list[int], list[int]]],
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    desc: str = "tiny SFT",
) -> list[float]:
    """``steps`` AdamW steps over consecutive batches of ``(input_ids, labels)`` rows (linear
    warm-up over 10%, cosine decay to 10% of ``lr``, gradient norm clipped at 1); returns the
    per-step losses and leaves the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, unit="step")
    for step in bar:
        batch = _collate(rows[step * batch_size : (step + 1) * batch_size], pad_id)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


# --------------------------------------------------------------------------- grading
def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, i = 1, starts[-1]
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[starts[-1] : i].strip()
        i += 1
    return None


@torch.no_grad()
def sample_answers(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    temperature: float = 1.0,
    seed: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 256,
) -> list[list[int]]:
    """Answer token ids (up to and including ``<|im_end|>``) for each user message.

    ``temperature == 0`` means greedy; otherwise pure sampling (no top-k / top-p), the
    distribution RL samples from. Reseeds torch's global RNG with ``seed``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    torch.manual_seed(seed)
    sampling = (
        dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        if temperature > 0
        else dict(do_sample=False)
    )
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        enc = [
            tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids
            for p in prompts[start : start + batch_size]
        ]
        T = max(len(x) for x in enc)
        # Left padding so every row's answer starts at column T.  # [B, T]
        ids = torch.tensor([[tokenizer.pad_token_id] * (T - len(x)) + x for x in enc])
        mask = torch.tensor([[0] * (T - len(x)) + [1] * len(x) for x in enc])
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        for row in gen[:, T:].tolist():
            end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else None
            out.append(row[:end])
    return out


def accuracy_report(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    examples: list[PromptExample],
    temperature: float,
    seed: int = 0,
    max_new_tokens: int = 48,
) -> dict[str, float]:
    """One answer per example at ``temperature`` (0 = greedy), graded against the gold.

    Returns ``accuracy`` (last boxed answer == gold), ``boxed_rate`` (share of answers with
    a closed ``\\boxed{}``), ``accuracy_when_boxed`` (accuracy among those; 0 if none) and
    ``mean_answer_tokens`` (``<|im_end|>`` included).
    """
    answers = sample_answers(
        model, tokenizer, [ex.prompt for ex in examples], temperature, seed, max_new_tokens
    )
    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    boxed = [extract_boxed(t) for t in texts]
    n_boxed = sum(b is not None for b in boxed)
    n_correct = sum(b == ex.answer for b, ex in zip(boxed, examples))
    return {
        "accuracy": n_correct / len(examples),
        "boxed_rate": n_boxed / len(examples),
        "accuracy_when_boxed": n_correct / n_boxed if n_boxed else 0.0,
        "mean_answer_tokens": sum(len(a) for a in answers) / len(answers),
    }


def measure_sampled_accuracy(
    model_dir: str | Path, n: int = 200, temperature: float = 1.0, seed: int = 0
) -> float:
    """Accuracy on ``n`` held-out problems sampled at ``temperature`` (0 = greedy).

    Loads ``model_dir`` with the Auto classes; the task difficulty is read from its
    ``BUILD_INFO.json`` when present (else the default :class:`ArithmeticConfig`).
    """
    if n < 1:
        raise ValueError(f"measure_sampled_accuracy: n must be >= 1, got {n}")
    model_dir = Path(model_dir)
    info_path = model_dir / BUILD_INFO
    task = ArithmeticConfig()
    if info_path.exists():
        task = ArithmeticConfig.from_dict(json.loads(info_path.read_text())["config"]["task"])
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = arithmetic_dataset("test", size=n, seed=seed, config=task).examples
    with torch.random.fork_rng(devices=[]), single_thread():
        return accuracy_report(model, tokenizer, examples, temperature, seed)["accuracy"]


# --------------------------------------------------------------------------- build + cache
def _build_into(tmp: Path, cfg: TinyBuildConfig) -> dict[str, Any]:
    """Build tokenizer, model and warm start into ``tmp``; return the BUILD_INFO dict."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    task = ArithmeticConfig.from_dict(cfg.task)
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.manual_seed(cfg.seed)
        n_sft = cfg.sft_steps * cfg.sft_batch_size
        train = arithmetic_dataset("train", size=n_sft, seed=cfg.seed, config=task).examples
        corpus = arithmetic_dataset("train", size=4000, seed=cfg.seed, config=task).examples
        tokenizer = build_tokenizer(_tokenizer_corpus(corpus), cfg.vocab_size)
        model = build_model(cfg, tokenizer)
        random.Random(cfg.seed).shuffle(train)
        t_sft = time.perf_counter()
        losses = run_sft(model, tokenizer, train, cfg)
        sft_s = time.perf_counter() - t_sft
        test = arithmetic_dataset("test", size=cfg.eval_n, seed=cfg.seed, config=task).examples
        sampled = accuracy_report(model, tokenizer, test, temperature=1.0, seed=cfg.seed)
        greedy = accuracy_report(model, tokenizer, test, temperature=0.0, seed=cfg.seed)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _add_torch_dtype(tmp / "config.json")
    _compat_tokenizer_config(tmp / "tokenizer_config.json")
    info = {
        "build_version": BUILD_VERSION,
        "digest": cfg.digest(),
        "config": asdict(cfg),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "sft_seconds": round(sft_s, 2),
        "sft_final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "sampled_accuracy_t1": sampled["accuracy"],
        "greedy_accuracy": greedy["accuracy"],
        "boxed_rate_t1": sampled["boxed_rate"],
        "accuracy_when_boxed_t1": round(sampled["accuracy_when_boxed"], 4),
        "mean_answer_tokens_t1": round(sampled["mean_answer_tokens"], 2),
        "mean_answer_tokens_greedy": round(greedy["mean_answer_tokens"], 2),
        "eval_n": cfg.eval_n,
        "torch_version": torch.__version__,
    }
    info["build_seconds"] = round(time.perf_counter() - t0, 2)
    info["build_cpu_seconds"] = round(time.process_time() - cpu0, 2)
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def _add_torch_dtype(config_path: Path) -> None:
    """Write ``torch_dtype`` next to transformers 5's ``dtype`` for older readers (SGLang, 4.x)."""
    cfg = json.loads(config_path.read_text())
    cfg["torch_dtype"] = cfg.setdefault("dtype", "float32")
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _compat_tokenizer_config(path: Path) -> None:
    """Use the class and key names transformers 4.x also reads (5.x reads both).

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` and ``extra_special_tokens``
    as a list, which 4.x cannot load; the chat template is copied in as well as kept in
    ``chat_template.jinja``.
    """
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens", [IM_START, IM_END])
    cfg["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build_tiny_policy(
    out_dir: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    sft_steps: int | None = None,
) -> Path:
    """Build (or reuse from cache) the tiny warm-started Qwen3 policy; return its directory.

    ``out_dir`` defaults to ``cache_root() / "tiny-qwen3-<config hash>"``. An existing
    complete build of the same config is reused unless ``force``; one of a different
    config raises, as does a non-empty directory that is not a build. ``sft_steps``
    overrides :attr:`TinyBuildConfig.sft_steps` (tests use a handful).
    """
    if sft_steps is not None and sft_steps < 1:
        raise ValueError(f"build_tiny_policy: sft_steps must be >= 1 (or None), got {sft_steps}")
    cfg = TinyBuildConfig(seed=seed, **({} if sft_steps is None else {"sft_steps": sft_steps}))
    out = Path(out_dir) if out_dir is not None else cache_root() / f"tiny-qwen3-{cfg.digest()}"
    return build_once(
        out, cfg.digest(), lambda tmp: _build_into(tmp, cfg), force, "build_tiny_policy"
    )


def build_once(
    out: Path, digest: str, build_into: Callable[[Path], Any], force: bool, who: str
) -> Path:
    """Reuse the build of ``digest`` at ``out``, or run ``build_into(tmp)`` in a temporary
    sibling directory and publish it to ``out`` atomically.

    A build of another digest raises unless ``force``; so does a non-empty directory that is
    not a build (even with ``force``: it is not ours to replace).
    """
    if out.exists() and not force:
        if is_build(out):
            found = json.loads((out / BUILD_INFO).read_text()).get("digest")
            if found == digest:
                return out
            raise ValueError(
                f"{who}: {out} holds a build of another config ({found}, wanted "
                f"{digest}); pass force=True to replace it or choose another out_dir"
            )
        if any(out.iterdir()):
            raise ValueError(
                f"{who}: out_dir {out} exists and is not a tiny-policy build; "
                "choose an empty or new directory"
            )
    if force and out.exists() and any(out.iterdir()) and not is_build(out):
        raise ValueError(f"{who}: refusing to replace {out}: it is not a tiny-policy build")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build_into(tmp)
        _publish(tmp, out, replace=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _publish(tmp: Path, out: Path, replace: bool) -> None:
    """Move a finished build to ``out`` atomically; a concurrent winner's copy is kept.

    :func:`strace_ds.storage.publish.publish_dir`: with ``replace`` the old build is moved aside to
    ``.<name>.old`` and deleted only once the new one is in place; without it a plain rename,
    which fails on a non-empty ``out`` -- a complete build already there (a concurrent
    winner's) is then kept.
    """
    try:
        publish_dir(tmp, out, replace=replace)
    except OSError:
        if not is_build(out):
            raise


def main(argv: list[str] | None = None) -> None:
    """CLI: build into ``--out`` and print the BUILD_INFO."""
    p = argparse.ArgumentParser(prog="python -m strace_ds.assets.recipes.arithmetic",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--out", default=None, help="model directory (default: the cache entry)")
    p.add_argument("--seed", type=int, default=0, help="build seed")
    p.add_argument("--sft-steps", type=int, default=None, help="override the warm-start steps")
    p.add_argument("--force", action="store_true", help="rebuild even if a build exists")
    args = p.parse_args(argv)
    out = build_tiny_policy(args.out, seed=args.seed, force=args.force, sft_steps=args.sft_steps)
    print(out)
    print((out / BUILD_INFO).read_text(), end="")


if __name__ == "__main__":
    main()
