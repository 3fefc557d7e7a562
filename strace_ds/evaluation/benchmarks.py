"""The maths benchmarks by name: where each lives on the hub, its columns, and how its gold
answers are normalised before math-verify sees them.

Every hub benchmark loads through :func:`strace_ds.data.loading.load_prompt_dataset`: from the
hub (online, or offline from the HF cache with ``HF_HUB_OFFLINE=1``), or from a local directory
holding ``<name>.jsonl`` in the hub schema (same column names and types), e.g. exported with
``datasets.load_dataset(hub_id, subset, split=split).to_json("<name>.jsonl")``. The test
fixtures in ``tests/fixtures/benchmarks/`` are such files.

| name | hub id | split | rows | question / answer columns |
|---|---|---|---|---|
| math500 | HuggingFaceH4/MATH-500 | test | 500 | problem / answer |
| aime24 | HuggingFaceH4/aime_2024 | train | 30 | problem / answer |
| aime25 | math-ai/aime25 | test | 30 | problem / answer |
| amc23 | math-ai/amc23 | test | 40 | question / answer |
| minerva | math-ai/minervamath | test | 272 | question / answer |
| olympiadbench | math-ai/olympiadbench | test | 674 | question / final_answer |
| beyondaime | ByteDance-Seed/BeyondAIME | test | 100 | problem / answer |
| synthetic | (generated) | test | 200 | the project's arithmetic task |
| chain | (generated) | test | 200 | the long-answer chain task (credit-assignment study) |
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from strace_ds.data.arithmetic import arithmetic_dataset
from strace_ds.data.loading import load_prompt_dataset
from strace_ds.data.types import PromptDataset


# ----------------------------------------------------------------------------- normalisers
def strip_math_delimiters(answer: str) -> str:
    """Drop surrounding whitespace and ``$...$`` delimiters (math-verify boxes the rest)."""
    return answer.strip().strip("$").strip()


def integral_number(answer: str) -> str:
    """``"27.0"`` -> ``"27"``: a number stored as a float cell becomes its integer text."""
    text = strip_math_delimiters(answer)
    return text.split(".")[0] if re.fullmatch(r"-?\d+\.0+", text) else text


def joined_answer_list(answer: str) -> str:
    """OlympiadBench's ``final_answer`` list -> one answer string.

    The loader turns the list cell into its ``str`` (``"['$4$']"``); it is parsed back with
    :func:`ast.literal_eval`, every ``$`` removed and the items joined with ``", "``, so a
    multi-answer row ``['$2$', '$3$']`` becomes ``"2, 3"``, which math-verify compares as a
    set of answers. A plain string is only stripped of ``$``.
    """
    try:
        items = ast.literal_eval(answer.strip())
    except (ValueError, SyntaxError):
        items = answer
    if isinstance(items, str):
        items = [items]
    return ", ".join(str(a).replace("$", "").strip() for a in items if str(a).strip())


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark comes from and how its rows become (question, gold answer) pairs."""

    name: str
    """Registry key; also the local file name ``<data_dir>/<name>.jsonl``."""
    hub_id: str | None
    """Hugging Face dataset id (None for generated benchmarks)."""
    split: str
    """Split holding the problems (some hub sets only have ``train``)."""
    prompt_column: str
    """Column with the question text."""
    answer_column: str
    """Column with the gold answer (string, number, or list of strings)."""
    subset: str | None = None
    """Hub configuration name, None for the default one."""
    size: int | None = None
    """Rows in the full split (documentation and sanity checks)."""
    normalize: Callable[[str], str] = strip_math_delimiters
    """Gold-answer normalisation applied after loading (the loader has made it a string)."""
    notes: str = ""
    """Schema and answer-format notes."""
    instruction: str | None = None
    """Appended to the question: None = :data:`strace_ds.data.prompts.INSTRUCTION`, "" none."""
    loader: Callable[[BenchmarkSpec, int | None], PromptDataset] | None = field(
        default=None, repr=False
    )
    """Replaces the hub/local loading (generated benchmarks); called as ``loader(spec, limit)``."""


def _synthetic(spec: BenchmarkSpec, limit: int | None) -> PromptDataset:
    """The held-out split of the arithmetic task, seed 0 (fixed problems across runs)."""
    return arithmetic_dataset(split=spec.split, size=limit or spec.size or 200, seed=0)


def _chain(spec: BenchmarkSpec, limit: int | None) -> PromptDataset:
    """The held-out split of the chain task (default knobs), seed 0."""
    from strace_ds.data.chain import chain_dataset

    return chain_dataset(split=spec.split, size=limit or spec.size or 200, seed=0)


def _generated(name: str, loader: Callable, notes: str) -> BenchmarkSpec:
    """A generated task's held-out split as a benchmark (200 problems, its own instruction)."""
    return BenchmarkSpec(name=name, hub_id=None, split="test", prompt_column="prompt",
                         answer_column="answer", size=200, instruction="", loader=loader,
                         notes=notes)  # fmt: skip


def _registry(*specs: BenchmarkSpec) -> dict[str, BenchmarkSpec]:
    """Name -> spec; a duplicated name is a bug, not an override."""
    names = [s.name for s in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"BENCHMARKS: duplicated names {duplicated}")
    return {s.name: s for s in specs}


BENCHMARKS: dict[str, BenchmarkSpec] = _registry(
    BenchmarkSpec(
        name="math500",
        hub_id="HuggingFaceH4/MATH-500",
        split="test",
        prompt_column="problem",
        answer_column="answer",
        size=500,
        notes="PRM800K's 500-problem MATH test subset. Columns: problem, solution, answer "
        "(LaTeX string, the boxed answer of the solution), subject, level (int 1-5), "
        "unique_id. Answers are used as they are: math-verify handles \\left(...\\right), "
        "\\dfrac, \\text{} and intervals.",
    ),
    BenchmarkSpec(
        name="aime24",
        hub_id="HuggingFaceH4/aime_2024",
        split="train",
        prompt_column="problem",
        answer_column="answer",
        size=30,
        notes="AIME 2024 I and II. Columns: id (int), problem, solution, answer (string "
        "integer 0-999), url, year. The dataset only has a train split.",
    ),
    BenchmarkSpec(
        name="aime25",
        hub_id="math-ai/aime25",
        split="test",
        prompt_column="problem",
        answer_column="answer",
        size=30,
        notes="AIME 2025 I and II. Columns: id, problem, answer (string integer 0-999).",
    ),
    BenchmarkSpec(
        name="amc23",
        hub_id="math-ai/amc23",
        split="test",
        prompt_column="question",
        answer_column="answer",
        size=40,
        normalize=integral_number,
        notes="AMC 12 2023 problems with numeric answers (the choice letter replaced by "
        "its value). Columns: id (int), question, answer (a number cell, e.g. 27.0), url. "
        "Integral floats are written as integers ('27.0' -> '27').",
    ),
    BenchmarkSpec(
        name="minerva",
        hub_id="math-ai/minervamath",
        split="test",
        prompt_column="question",
        answer_column="answer",
        size=272,
        notes="Minerva's OCWCourses set (MIT OCW science and engineering problems). "
        "Columns: question, answer (string: numbers, scientific notation such as "
        "'6 \\times 10^{14}', a few expressions). Units are not part of the answer; "
        "math-verify compares numbers at its default relative precision.",
    ),
    BenchmarkSpec(
        name="olympiadbench",
        hub_id="math-ai/olympiadbench",
        split="test",
        prompt_column="question",
        answer_column="final_answer",
        size=674,
        normalize=joined_answer_list,
        notes="OlympiadBench's English, text-only, open-ended competition-maths subset "
        "(OE_TO_maths_en_COMP; the original is Hothan/OlympiadBench with that subset). "
        "Columns: id, question, solution (list), final_answer (list of strings like "
        "'$2^{1009}$'), context, modality, difficulty, is_multiple_answer, unit, "
        "answer_type, error, question_type, subfield, subject, language. final_answer "
        "items are joined with ', ' after removing '$'.",
    ),
    BenchmarkSpec(
        name="beyondaime",
        hub_id="ByteDance-Seed/BeyondAIME",
        split="test",
        prompt_column="problem",
        answer_column="answer",
        size=100,
        notes="ByteDance Seed's BeyondAIME: 100 harder-than-AIME problems with integer "
        "answers (not limited to 0-999). Columns: problem, answer.",
    ),
    _generated(
        "synthetic",
        _synthetic,
        "The project's arithmetic task, held-out split, seed 0 "
        "(strace_ds.data.arithmetic.arithmetic_dataset). Prompts already end with the "
        "task's own boxed-answer instruction, so none is added.",
    ),
    _generated(
        "chain",
        _chain,
        "The chain task (strace_ds.data.chain, default knobs), held-out split, seed 0: "
        "~100-token answers decided by 3 results. Prompts carry their own instruction.",
    ),
)
"""Benchmark name -> :class:`BenchmarkSpec`."""


def get_benchmark(name: str) -> BenchmarkSpec:
    """The spec registered as ``name``; ValueError listing the valid names otherwise."""
    spec = BENCHMARKS.get(name)
    if spec is None:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return spec


def parse_benchmark_names(names: str | list[str]) -> list[str]:
    """``"math500,aime24"`` or a list -> validated, de-duplicated names in the given order."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in (n.strip() for n in items):
        if item and item not in out:
            out.append(get_benchmark(item).name)
    if not out:
        raise ValueError(f"no benchmark named; choose from {', '.join(BENCHMARKS)}")
    return out


def load_benchmark(
    name: str, data_dir: str | Path | None = None, limit: int | None = None
) -> PromptDataset:
    """Load benchmark ``name`` as a :class:`PromptDataset` with normalised gold answers.

    Args:
        name: a key of :data:`BENCHMARKS`.
        data_dir: a directory with ``<name>.jsonl`` in the hub schema; None loads from the hub
            (generated benchmarks ignore it).
        limit: keep the first ``limit`` problems (quick runs).

    Rows whose answer normalises to nothing are dropped and counted in ``skipped``; each
    example's ``meta`` keeps ``raw_answer`` when normalisation changed it.
    """
    spec = get_benchmark(name)
    if spec.loader is not None:
        dataset = spec.loader(spec, limit)
    else:
        source: str = spec.hub_id or ""
        if data_dir is not None:
            path = Path(data_dir) / f"{spec.name}.jsonl"
            if not path.is_file():
                raise ValueError(
                    f"load_benchmark: data_dir={str(data_dir)!r} has no {path.name}; write the "
                    f"{spec.hub_id} split {spec.split!r} there as JSON lines (columns "
                    f"{spec.prompt_column!r}, {spec.answer_column!r}) or drop data_dir to use "
                    "the hub"
                )
            source = str(path)
        dataset = load_prompt_dataset(
            source,
            split=spec.split,
            prompt_column=spec.prompt_column,
            answer_column=spec.answer_column,
            subset=spec.subset if data_dir is None else None,
            limit=limit,
            answer_format="raw",
            # a list gold (OlympiadBench's final_answer) is joined by its normaliser
            list_answers=spec.normalize is joined_answer_list,
        )
    return _normalized(dataset, spec)


def _normalized(dataset: PromptDataset, spec: BenchmarkSpec) -> PromptDataset:
    examples = []
    skipped = dataset.skipped
    for ex in dataset.examples:
        answer = spec.normalize(ex.answer)
        if not answer:
            skipped += 1
            continue
        meta = ex.meta if answer == ex.answer else {**ex.meta, "raw_answer": ex.answer}
        examples.append(replace(ex, answer=answer, meta=meta))
    if not examples:
        raise ValueError(
            f"load_benchmark: no usable problem in {spec.name} ({dataset.source}) after "
            "answer normalisation"
        )
    return PromptDataset(examples=examples, source=dataset.source, skipped=skipped)
