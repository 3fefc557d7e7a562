"""Load (question, gold answer) pairs from the Hugging Face hub or local files into a PromptDataset.

Everything goes through ``datasets.load_dataset``: a hub id directly, local files through the
packaged ``json``/``parquet``/``csv`` builders. Rows whose prompt or answer is missing or empty
are skipped and counted; structural problems (missing column, unknown extension, nothing
usable) raise ValueError with the fix.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
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


def _data_files(path: Path) -> list[Path]:
    """The data files ``_local_builder`` reads for a file or a directory."""
    if path.is_file():
        return [path]
    return sorted(f for f in path.rglob("*") if f.suffix.lower() in FILE_BUILDERS)


def _diagnose_file(path: Path) -> str | None:
    """Why a local data file cannot be read, naming it and the line; None if it looks fine.

    Runs only after ``datasets`` failed, so a good file costs nothing. JSON Lines are checked
    line by line; a ``.json`` file that is one document (an array) is parsed whole.
    """
    where = f"file {str(path)!r}"
    kind = path.suffix.lower()
    if path.stat().st_size == 0:
        return f"{where} is empty (no rows)"
    if kind == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - not readable as parquet: datasets' reason stands
            return None
        return f"{where} is empty (no rows)" if rows == 0 else None
    lines: list[str] = []  # all lines of a .json file, for the whole-document parse
    first_bad: str | None = None  # the first non-blank line that is not JSON on its own
    row = 0  # non-blank lines so far: the row index of a JSON Lines file
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (
                    f"{where} is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {number}, "
                    f"column {exc.start + 1} is not valid UTF-8; re-save the file as UTF-8 "
                    "(e.g. iconv -f latin1 -t utf-8, or pandas to_json/to_parquet)"
                )
            if kind == ".json":
                lines.append(line)
            if not line.strip():
                continue
            if kind != ".csv" and first_bad is None:
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    first_bad = (
                        f"{where} line {number} (row {row}) is not valid JSON: {exc.msg} at "
                        f"column {exc.colno}; fix or delete that line"
                    )
            row += 1
    if row == 0:
        return f"{where} is empty (no rows)"
    if kind == ".csv" and row == 1:
        return f"{where} has a header line but no rows"
    if kind == ".json":
        nonblank = [line for line in lines if line.strip()]
        if not (len(nonblank) > 1 and _parses(nonblank[0])):  # one document, not JSON Lines
            try:
                doc = json.loads("".join(lines))
            except json.JSONDecodeError as exc:
                return (
                    f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
                )
            if doc in ([], {}):
                return f"{where} is empty (the JSON document {doc!r} has no rows)"
            return None  # valid JSON: the failure was something else
    return first_bad


def _is_utf8(path: Path) -> bool:
    """Whether the whole file decodes as UTF-8 (1 MiB chunks; about 1 s per GB)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


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
        for file in _data_files(path):
            # pyarrow's JSON reader keeps invalid UTF-8 and fails only when a row is read.
            if file.suffix.lower() != ".parquet" and not _is_utf8(file):
                problem = _diagnose_file(file) or f"file {str(file)!r} is not UTF-8 text"
                raise ValueError(f"load_prompt_dataset: {problem}")
        try:
            return datasets.load_dataset(builder, split=split, **kwargs), str(path)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one named ValueError
            # Empty, not UTF-8, broken JSON: name the file and line, not the builder's internals.
            problem = next(filter(None, map(_diagnose_file, _data_files(path))), None)
            if problem:
                raise ValueError(f"load_prompt_dataset: {problem}") from exc
            if isinstance(exc, ValueError):  # e.g. Unknown split "test". Should be one of ...
                raise ValueError(f"load_prompt_dataset: {source!r}: {exc}") from exc
            root = exc
            while root.__cause__ is not None or root.__context__ is not None:
                root = root.__cause__ or root.__context__  # type: ignore[assignment]
            reason = str(root).strip().splitlines()[0] if str(root).strip() else ""
            raise ValueError(
                f"load_prompt_dataset: could not read {source!r}: "
                f"{type(root).__name__}: {reason[:300]}"
            ) from exc
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


def _check_answer_cells(ds: datasets.Dataset, name: str, answer_column: str) -> None:
    """A list or dict in the answer column is an error naming its row, not a gold "[1, 2]".

    A plain ``Value`` column (string/number) cannot hold one, so only other feature types
    (lists, structs, mixed JSON) are scanned.
    """
    if isinstance(ds.features.get(answer_column), datasets.Value):
        return
    row = 0
    for batch in ds.select_columns([answer_column]).iter(batch_size=_BATCH):
        for value in batch[answer_column]:
            if isinstance(value, (list, tuple, dict)):
                kind = "dict" if isinstance(value, dict) else "list"
                shown = repr(value if kind == "dict" else list(value))
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                raise ValueError(
                    f"load_prompt_dataset: {name!r} row {row} (counting from 0): "
                    f"answer_column={answer_column!r} holds a {kind} ({shown}), expected one gold "
                    f"answer (a string or a number); pick a column of single answers or turn "
                    f"each {kind} into one string first"
                )
            row += 1


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
    list_answers: bool = False,
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
        list_answers: accept a list in the answer column, stringified for a normaliser that
            joins it (the evaluation registry's ``joined_answer_list``); by default a list or
            dict answer is an error naming its row.

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
    if not list_answers:
        _check_answer_cells(ds, name, answer_column)  # before shuffling: rows as in the file
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


def unparseable_golds(golds: Iterable[str]) -> list[str]:
    """The golds (each once, in first-seen order) that the grader cannot parse.

    Each gold goes through :func:`strace_ds.rewards.grading.grade_answer` itself, which parses
    the gold first and raises ``ValueError`` when math-verify finds nothing in it: every answer
    to such a prompt is a grading error (reward 0, no gradient). With an empty response the
    call stops right after the gold's parse, so this costs one math-verify parse per distinct
    gold (a few ms).
    """
    from strace_ds.rewards.grading import grade_answer

    bad = []
    for gold in dict.fromkeys(golds):
        try:
            grade_answer("", gold)
        except Exception:  # ValueError: unparseable; anything else fails grading the same way
            bad.append(gold)
    return bad


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
