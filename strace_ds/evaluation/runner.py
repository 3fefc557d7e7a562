"""Sample k answers per problem with any rollout engine, grade them, and score avg@k / pass@k.

``avg@k`` is the accuracy over all ``problems x k`` samples; ``pass@j`` (j = 1, 2, 4, ..., k by
default) is the mean over problems of the unbiased estimator of :mod:`.metrics`. With the same
k for every problem, ``pass@1 == avg@k`` exactly.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from strace_ds.data.prompts import build_prompt_ids
from strace_ds.data.types import PromptDataset
from strace_ds.evaluation.benchmarks import BENCHMARKS, load_benchmark, parse_benchmark_names
from strace_ds.evaluation.metrics import check_ks, default_ks, pass_at_k
from strace_ds.evaluation.report import write_report
from strace_ds.rewards.pool import RewardResult
from strace_ds.rollout.base import RolloutEngine, SamplingParams


class Grader(Protocol):
    """What evaluation needs from :class:`strace_ds.rewards.RewardPool`."""

    def score(self, responses: list[str], golds: list[str]) -> RewardResult: ...


@dataclass
class SampleResult:
    """One graded answer."""

    text: str
    """Decoded answer (special tokens skipped)."""
    reward: float
    """The grader's reward (1.0 / 0.0 for math-verify)."""
    finish_reason: str
    """``"stop"`` / ``"length"`` / ``"abort"`` as reported by the engine."""
    num_tokens: int
    """Answer length in tokens (stop token included)."""
    timed_out: bool = False
    """The grader was killed on this answer (reward 0)."""
    error: str | None = None
    """The grader raised on this answer (reward 0), e.g. an unparseable gold answer."""

    @property
    def correct(self) -> bool:
        """A reward above 0.5 counts as correct (the math-verify reward is binary)."""
        return self.reward > 0.5


@dataclass
class ProblemResult:
    """All samples of one problem."""

    index: int
    """Position in the evaluated dataset."""
    id: str
    """The dataset's own id (``unique_id``/``id`` column) or the row index."""
    prompt: str
    gold: str
    samples: list[SampleResult] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def num_correct(self) -> int:
        return sum(s.correct for s in self.samples)

    def to_dict(self, ks: list[int]) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "prompt": self.prompt,
            "gold": self.gold,
            "n": self.n,
            "correct": self.num_correct,
            **{f"pass@{j}": pass_at_k(self.n, self.num_correct, j) for j in ks},
            "samples": [{**dataclasses.asdict(s), "correct": s.correct} for s in self.samples],
        }


@dataclass
class BenchmarkResult:
    """Scores and per-problem samples of one benchmark."""

    name: str
    k: int
    """Samples drawn per problem."""
    ks: list[int]
    """The j of the reported pass@j."""
    problems: list[ProblemResult]
    source: str = ""
    weight_version: int | None = None
    seconds: float = 0.0

    @property
    def samples(self) -> list[SampleResult]:
        return [s for p in self.problems for s in p.samples]

    @property
    def num_correct(self) -> int:
        return sum(p.num_correct for p in self.problems)

    @property
    def avg_at_k(self) -> float:
        """Accuracy over all samples: total correct / total samples."""
        return self.num_correct / sum(p.n for p in self.problems)

    @property
    def pass_at(self) -> dict[int, float]:
        """``{j: mean over problems of pass@j}``."""
        return {
            j: sum(pass_at_k(p.n, p.num_correct, j) for p in self.problems) / len(self.problems)
            for j in self.ks
        }

    def summary(self) -> dict[str, Any]:
        """The headline numbers (no samples), JSON-ready."""
        samples = self.samples
        return {
            "name": self.name,
            "source": self.source,
            "num_problems": len(self.problems),
            "samples_per_problem": self.k,
            "num_samples": len(samples),
            "num_correct": self.num_correct,
            f"avg@{self.k}": self.avg_at_k,
            **{f"pass@{j}": v for j, v in self.pass_at.items()},
            "grader_timeouts": sum(s.timed_out for s in samples),
            "grader_errors": sum(s.error is not None for s in samples),
            "truncated_frac": sum(s.finish_reason == "length" for s in samples) / len(samples),
            "mean_response_tokens": sum(s.num_tokens for s in samples) / len(samples),
            "weight_version": self.weight_version,
            "seconds": round(self.seconds, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        """:meth:`summary` plus every problem with its samples."""
        return {**self.summary(), "problems": [p.to_dict(self.ks) for p in self.problems]}


def eval_scalars(result: BenchmarkResult) -> dict[str, float]:
    """TensorBoard scalars for one benchmark, namespaced ``eval/<name>/...``.

    ``avg@k``, every ``pass@j``, ``truncated_frac`` (share of answers cut at max_new_tokens),
    ``mean_response_tokens`` and ``grader_timeouts`` / ``grader_errors`` (counts).
    """
    summary = result.summary()
    keys = [f"avg@{result.k}", *(f"pass@{j}" for j in result.ks)]
    keys += ["truncated_frac", "mean_response_tokens", "grader_timeouts", "grader_errors"]
    return {f"eval/{result.name}/{key}": float(summary[key]) for key in keys}


def _instruction_for(dataset: PromptDataset, instruction: str | None) -> str | None:
    """The synthetic task's prompts already carry their instruction; others get the default."""
    if instruction is None and dataset.source.startswith(("synthetic:", "chain:")):
        return ""
    return instruction


def _sample_and_grade(
    engine: RolloutEngine,
    tokenizer: Any,
    chunk: list[ProblemResult],
    k: int,
    sampling: SamplingParams,
    reward_pool: Grader,
    instruction: str | None,
) -> int | None:
    """One ``generate`` call for ``chunk`` (x k rows), graded; samples appended in place.

    Returns the engine's weight version. Rows are attributed through ``prompt_index``, so an
    engine that reorders rows is still scored correctly; a wrong row count is an error.
    """
    prompt_ids = [build_prompt_ids(tokenizer, p.prompt, instruction) for p in chunk]
    gen = engine.generate(prompt_ids, k, sampling)
    expected = sorted(i for i in range(len(chunk)) for _ in range(k))
    if len(gen) != len(chunk) * k or sorted(gen.prompt_index) != expected:
        raise RuntimeError(
            f"evaluate_benchmark: the engine returned {len(gen)} rows with prompt_index "
            f"{gen.prompt_index[:8]}...; expected {k} rows for each of {len(chunk)} prompts"
        )
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in gen.token_ids]
    graded = reward_pool.score(texts, [chunk[i].gold for i in gen.prompt_index])
    for row, i in enumerate(gen.prompt_index):
        chunk[i].samples.append(
            SampleResult(
                text=texts[row],
                reward=float(graded.rewards[row]),
                finish_reason=gen.finish_reasons[row],
                num_tokens=len(gen.token_ids[row]),
                timed_out=bool(graded.timed_out[row]),
                error=graded.errors[row],
            )
        )
    return gen.weight_version


def evaluate_benchmark(
    engine: RolloutEngine,
    tokenizer: Any,
    dataset: PromptDataset,
    k: int,
    sampling: SamplingParams,
    reward_pool: Grader,
    ks: list[int] | None = None,
    *,
    name: str | None = None,
    instruction: str | None = None,
    prompts_per_call: int = 64,
    progress: bool = True,
) -> BenchmarkResult:
    """Draw ``k`` samples per problem of ``dataset``, grade them, and score avg@k and pass@j.

    Args:
        engine: any :class:`RolloutEngine` (in-process HF or SGLang).
        tokenizer: builds the chat prompts and decodes the answers.
        dataset: the problems (see :func:`strace_ds.evaluation.load_benchmark`).
        k: samples per problem.
        sampling: sampling parameters; with ``seed`` set, call ``i`` uses ``seed + i`` so the
            whole evaluation is reproducible.
        reward_pool: a :class:`strace_ds.rewards.RewardPool` (or anything with ``score``).
        ks: the j of pass@j; default 1, 2, 4, ..., k.
        name: the benchmark name in reports and scalars (default ``dataset.source``).
        instruction: appended to each question; None = the standard boxed-answer instruction
            (none for the synthetic task, whose prompts carry their own).
        prompts_per_call: problems per ``engine.generate`` call (x k rows each).
        progress: show a tqdm bar.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"evaluate_benchmark: k (samples per problem) must be >= 1, got {k!r}")
    if prompts_per_call < 1:
        raise ValueError(
            f"evaluate_benchmark: prompts_per_call must be >= 1, got {prompts_per_call}"
        )
    if len(dataset) == 0:
        raise ValueError(f"evaluate_benchmark: dataset {dataset.source!r} has no problems")
    ks = default_ks(k) if ks is None else check_ks(ks, k)
    name = name or dataset.source
    instruction = _instruction_for(dataset, instruction)
    problems = [
        ProblemResult(i, str(ex.meta.get("unique_id", ex.meta.get("id", i))), ex.prompt, ex.answer)
        for i, ex in enumerate(dataset.examples)
    ]
    start = time.perf_counter()
    version = None
    starts = range(0, len(problems), prompts_per_call)
    for call, lo in enumerate(tqdm(starts, desc=f"eval/{name}", disable=not progress)):
        seed = None if sampling.seed is None else sampling.seed + call
        version = _sample_and_grade(
            engine, tokenizer, problems[lo : lo + prompts_per_call], k,
            dataclasses.replace(sampling, seed=seed), reward_pool, instruction,
        )  # fmt: skip
    return BenchmarkResult(
        name=name,
        k=k,
        ks=ks,
        problems=problems,
        source=dataset.source,
        weight_version=version,
        seconds=time.perf_counter() - start,
    )


def average_summaries(results: list[BenchmarkResult]) -> dict[str, float]:
    """Unweighted mean over benchmarks of avg@k and each pass@j (each benchmark counts once)."""
    keys = [f"avg@{results[0].k}", *(f"pass@{j}" for j in results[0].ks)]
    summaries = [r.summary() for r in results]
    return {key: sum(s[key] for s in summaries) / len(summaries) for key in keys}


def evaluate(
    engine: RolloutEngine,
    tokenizer: Any,
    benchmarks: str | list[str],
    k: int,
    sampling: SamplingParams,
    reward_pool: Grader,
    data_dir: str | Path | None = None,
    *,
    ks: list[int] | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate several benchmarks by name; return (and optionally write) the JSON report.

    The report holds ``k``, ``ks``, ``sampling``, ``benchmarks`` (name -> summary plus
    ``problems`` with every sample) and ``average`` (unweighted mean over benchmarks). Unknown
    names raise ValueError listing :data:`BENCHMARKS` before anything is generated.
    """
    names = parse_benchmark_names(benchmarks)
    datasets = {name: load_benchmark(name, data_dir=data_dir, limit=limit) for name in names}
    results = [
        evaluate_benchmark(
            engine,
            tokenizer,
            dataset,
            k,
            sampling,
            reward_pool,
            ks,
            name=name,
            instruction=BENCHMARKS[name].instruction,
            progress=progress,
        )
        for name, dataset in datasets.items()
    ]
    report = {
        "k": k,
        "ks": results[0].ks,
        "sampling": dataclasses.asdict(sampling),
        "benchmarks": {r.name: r.to_dict() for r in results},
        "average": average_summaries(results),
    }
    if out is not None:
        write_report(report, out)
    return report
