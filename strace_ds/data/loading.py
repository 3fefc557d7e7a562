"""Load (question, gold answer) pairs from the Hugging Face hub or local files into a PromptDataset.

Everything goes through ``datasets.load_dataset``: a hub id directly, local files through the
packaged ``json``/``parquet``/``csv`` builders. Rows whose prompt or answer is missing or empty
are skipped and counted; structural problems (missing column, unknown extension, nothing
usable) raise ValueError with the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from strace_ds.data.types import PromptDataset, PromptExample
from strace_ds.rewards.extract import extract_boxed_answer

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
"""Local file extension -> the ``datasets`` packaged builder that reads it."""
ANSWER_FORMATS = ("auto", "raw", "boxed")
_BATCH = 1024  # rows per batch while iterating (bounded memory on large hub datasets)


def _local_builder(path: Path) -> tuple[str, dict[str, Any]]:
    """``(builder, load_dataset kwargs)`` for a local file or directory of files."""
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"load_prompt_dataset: source {str(path)!r} has extension {path.suffix!r}; "
                f"supported: {', '.join(FILE_BUILDERS)} (convert the file, e.g. with pandas)"
            )
        return builder, {"data_files": str(path)}
    builders = {
        FILE_BUILDERS[f.suffix.lower()]
        for f in path.rglob("*")
        if f.suffix.lower() in FILE_BUILDERS
    }
    if len(builders) != 1:
        found = "no" if not builders else f"mixed ({', '.join(sorted(builders))})"
        raise ValueError(
            f"load_prompt_dataset: directory {str(path)!r} holds {found} data files; it must hold "
            f"files of one kind among {', '.join(FILE_BUILDERS)}, or pass one file as source"
        )
    # data_dir lets `datasets` split files by name (train.jsonl / test-00000.parquet ...).
    return builders.pop(), {"data_dir": str(path)}


def _looks_local(source: str) -> bool:
    """A source that names a file path (but was not found) rather than a hub id."""
    return source.startswith(("/", ".", "~")) or Path(source).suffix.lower() in FILE_BUILDERS


def _load_raw(source: str, split: str, subset: str | None) -> tuple[datasets.Dataset, str]:
    """The raw ``datasets.Dataset`` for ``source``/``split``, and a printable source name."""
    path = Path(source).expanduser()
    if path.exists():
        builder, kwargs = _local_builder(path)
        if "data_files" in kwargs:  # one file is whatever split was asked for
            kwargs["data_files"] = {split: kwargs["data_files"]}
        try:
            return datasets.load_dataset(builder, split=split, **kwargs), str(path)
        except ValueError as exc:  # e.g. Unknown split "test". Should be one of ['train'].
            raise ValueError(f"load_prompt_dataset: {source!r}: {exc}") from exc
    if _looks_local(source):
        raise ValueError(f"load_prompt_dataset: local source {source!r} does not exist")
    try:
        return datasets.load_dataset(source, subset, split=split), source
    except Exception as exc:  # network, auth, unknown id/subset/split: all end the same way
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise ValueError(
            f"load_prompt_dataset: could not load hub dataset {source!r} (subset={subset!r}, "
            f"split={split!r}): {reason[:300]}. If this machine is offline, export the data "
            "where the hub is reachable (datasets.load_dataset(...).to_parquet('train.parquet')) "
            "and pass the local path instead: load_prompt_dataset('/path/to/train.parquet'); "
            "a dataset already in the HF cache also loads with HF_HUB_OFFLINE=1"
        ) from exc


def _answer_text(value: Any, answer_format: str) -> str | None:
    """Gold answer string from a raw cell, or None when the row has no usable answer."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # csv/pandas turn an int column with a gap into floats: 42.0 -> "42"
    text = value.strip() if isinstance(value, str) else str(value)
    if not text:
        return None
    wants_box = answer_format == "boxed" or (
        answer_format == "auto" and ("\\boxed" in text or "\\fbox" in text)
    )
    return extract_boxed_answer(text) if wants_box else text


def _check_columns(ds: datasets.Dataset, source: str, columns: dict[str, str]) -> None:
    for arg, name in columns.items():
        if name not in ds.column_names:
            raise ValueError(
                f"load_prompt_dataset: {arg}={name!r} is not a column of {source!r}; available "
                f"columns: {', '.join(ds.column_names)}. Pass {arg}=<one of those>"
            )


def load_prompt_dataset(
    source: str,
    split: str = "train",
    prompt_column: str = "problem",
    answer_column: str = "answer",
    subset: str | None = None,
    limit: int | None = None,
    shuffle_seed: int | None = None,
    answer_format: str = "auto",
) -> PromptDataset:
    """Load question/answer rows from a hub dataset id or a local file/directory.

    Args:
        source: a hub id (``"HuggingFaceH4/MATH-500"``) or a local ``.json``/``.jsonl``/
            ``.parquet``/``.csv`` file, or a directory of such files (split by file name,
            e.g. ``train.jsonl``/``test.jsonl``, as ``datasets`` does). A single file is used as
            the requested ``split`` whatever its name.
        split: split to read.
        prompt_column: column holding the question text.
        answer_column: column holding the gold answer (string or number) or a worked solution.
        subset: hub configuration name (e.g. ``"algebra"``); ignored for local files.
        limit: keep at most this many usable examples (counted after skipping bad rows).
        shuffle_seed: shuffle rows with this seed before ``limit`` applies; None keeps order.
        answer_format: ``"raw"`` uses the cell as the answer; ``"boxed"`` extracts the last
            ``\\boxed{}`` (rows without one are skipped); ``"auto"`` extracts only when the cell
            contains ``\\boxed``/``\\fbox`` (answers like ``"42"`` and full solutions both work).

    Returns:
        A :class:`PromptDataset`; each example's ``meta`` holds the row's other columns, its
        ``row`` index in the loaded split and, when an answer was extracted, the ``solution``.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(
            f"load_prompt_dataset: answer_format={answer_format!r}; choose one of "
            f"{', '.join(ANSWER_FORMATS)}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(
            f"load_prompt_dataset: limit must be a positive int or None, got {limit!r}"
        )
    ds, name = _load_raw(source, split, subset)
    _check_columns(ds, name, {"prompt_column": prompt_column, "answer_column": answer_column})
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
    examples, skipped = _collect(ds, name, prompt_column, answer_column, answer_format, limit)
    if not examples:
        raise ValueError(
            f"load_prompt_dataset: no usable row in {name!r} split {split!r}: all {skipped} rows "
            f"lack a prompt ({prompt_column!r}) or an answer ({answer_column!r}"
            + (", with a \\boxed{} answer" if answer_format == "boxed" else "")
            + "); check the column names or answer_format"
        )
    return PromptDataset(examples=examples, source=name, skipped=skipped)


def _collect(
    ds: datasets.Dataset,
    name: str,
    prompt_column: str,
    answer_column: str,
    answer_format: str,
    limit: int | None,
) -> tuple[list[PromptExample], int]:
    """Turn rows into examples until ``limit`` usable ones; returns ``(examples, skipped)``."""
    examples: list[PromptExample] = []
    skipped = 0
    row = 0
    for batch in ds.iter(batch_size=_BATCH):
        for j in range(len(batch[prompt_column])):
            cells = {col: values[j] for col, values in batch.items()}
            prompt = cells.pop(prompt_column)
            if prompt is not None and not isinstance(prompt, str):
                raise ValueError(
                    f"load_prompt_dataset: prompt_column={prompt_column!r} of {name!r} holds "
                    f"{type(prompt).__name__} values, expected text; pick a text column"
                )
            raw_answer = cells.pop(answer_column)
            answer = _answer_text(raw_answer, answer_format)
            if not prompt or not prompt.strip() or not answer:
                skipped += 1
            else:
                meta = {**cells, "row": row}
                if answer != str(raw_answer).strip():
                    meta["solution"] = raw_answer
                examples.append(PromptExample(prompt=prompt.strip(), answer=answer, meta=meta))
                if limit is not None and len(examples) >= limit:
                    return examples, skipped
            row += 1
    return examples, skipped
