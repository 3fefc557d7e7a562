"""Loading local json/jsonl/parquet/csv files through the real `datasets` builders; prompts."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BatchEncoding, PreTrainedTokenizerFast

from strace_ds.data.loading import load_prompt_dataset
from strace_ds.data.prompts import INSTRUCTION, _as_id_list, build_prompt_ids

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _isolated_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrow caches go to tmp_path, and the hub is never contacted (fast, offline failures)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- formats
def test_jsonl_skips_and_counts_unusable_rows(tmp_path: Path) -> None:
    rows = [
        {"problem": "What is 1+1?", "answer": "2", "level": 1},
        {"problem": None, "answer": "3", "level": 1},  # missing prompt
        {"problem": "   ", "answer": "4", "level": 2},  # blank prompt
        {"problem": "What is 2+3?", "answer": "", "level": 2},  # empty answer
        {"problem": "What is 3+3?", "level": 3},  # answer key absent -> null
        {"problem": "  What is 3*3?\n", "answer": " 9 ", "level": 3},
    ]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    ds = load_prompt_dataset(str(path))
    assert ds.skipped == 4
    assert len(ds) == 2
    assert [(e.prompt, e.answer) for e in ds.examples] == [
        ("What is 1+1?", "2"),
        ("What is 3*3?", "9"),
    ]
    assert ds.examples[1].meta == {"level": 3, "row": 5}  # row index in the file
    assert ds.source == str(path)


def test_json_array_with_numeric_and_latex_answers(tmp_path: Path) -> None:
    rows = [
        {"problem": "p0", "answer": 42},
        {"problem": "p1", "answer": 0.5},
        {"problem": "p2", "answer": "\\frac{1}{2}"},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    ds = load_prompt_dataset(str(path))
    assert [e.answer for e in ds.examples] == ["42", "0.5", "\\frac{1}{2}"]
    assert ds.skipped == 0


def test_parquet_solutions_boxed_extraction(tmp_path: Path) -> None:
    rows = {
        "question": ["q0", "q1", "q2"],
        "solution": [
            "We get $x=\\boxed{\\frac{3}{4}}$.",
            "First \\boxed{1}, corrected: \\boxed{\\{1,2\\}}",
            "The answer is 7.",  # no box
        ],
    }
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(path))
    kwargs = {"prompt_column": "question", "answer_column": "solution"}

    auto = load_prompt_dataset(str(path), **kwargs)  # boxed where present, raw otherwise
    assert [e.answer for e in auto.examples] == ["\\frac{3}{4}", "\\{1,2\\}", "The answer is 7."]
    assert auto.examples[0].meta["solution"] == rows["solution"][0]
    assert "solution" not in auto.examples[2].meta  # nothing was extracted there

    boxed = load_prompt_dataset(str(path), answer_format="boxed", **kwargs)
    assert [e.answer for e in boxed.examples] == ["\\frac{3}{4}", "\\{1,2\\}"]
    assert boxed.skipped == 1

    raw = load_prompt_dataset(str(path), answer_format="raw", **kwargs)
    assert raw.examples[0].answer == rows["solution"][0]


def test_csv_numbers_and_missing_cells(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("problem,answer\nWhat is 6*7?,42\nWhat is 1-1?,\n,5\nHalf of 1?,0.5\n")
    ds = load_prompt_dataset(str(path))
    assert [(e.prompt, e.answer) for e in ds.examples] == [
        ("What is 6*7?", "42"),  # pandas reads 42.0 (float column: it has an empty cell)
        ("Half of 1?", "0.5"),
    ]
    assert ds.skipped == 2


def test_directory_splits_by_file_name(tmp_path: Path) -> None:
    folder = tmp_path / "math"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [{"problem": f"t{i}", "answer": i} for i in range(3)])
    _write_jsonl(folder / "test.jsonl", [{"problem": "e0", "answer": 9}])
    assert [e.prompt for e in load_prompt_dataset(str(folder), split="test").examples] == ["e0"]
    assert len(load_prompt_dataset(str(folder), split="train")) == 3
    with pytest.raises(ValueError, match="validation"):
        load_prompt_dataset(str(folder), split="validation")


def test_limit_and_shuffle(tmp_path: Path) -> None:
    rows = [{"problem": f"p{i}", "answer": str(i)} for i in range(10)]
    rows[1]["answer"] = ""  # skipped; limit counts usable examples
    path = _write_jsonl(tmp_path / "train.jsonl", rows)

    first = load_prompt_dataset(str(path), limit=3)
    assert [e.prompt for e in first.examples] == ["p0", "p2", "p3"]
    assert first.skipped == 1

    a = [e.prompt for e in load_prompt_dataset(str(path), shuffle_seed=0).examples]
    b = [e.prompt for e in load_prompt_dataset(str(path), shuffle_seed=0).examples]
    assert a == b  # reproducible
    assert sorted(a) == sorted(f"p{i}" for i in range(10) if i != 1)
    assert a != sorted(a, key=lambda p: int(p[1:]))  # actually reordered
    assert [e.prompt for e in load_prompt_dataset(str(path), shuffle_seed=0, limit=4)] == a[:4]


# ----------------------------------------------------------------------------- errors
def test_missing_column_names_the_available_ones(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "final": "1"}])
    with pytest.raises(ValueError, match="available columns: question, final") as err:
        load_prompt_dataset(str(path))
    assert "prompt_column='problem'" in str(err.value)
    with pytest.raises(ValueError, match="answer_column='answer' is not a column"):
        load_prompt_dataset(str(path), prompt_column="question")


def test_no_usable_row_is_an_error(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [{"problem": "q", "answer": ""}] * 3)
    with pytest.raises(ValueError, match="no usable row .* all 3 rows"):
        load_prompt_dataset(str(path))


def test_bad_sources_and_arguments(tmp_path: Path) -> None:
    txt = tmp_path / "train.txt"
    txt.write_text("problem,answer\n")
    with pytest.raises(ValueError, match=r"extension '\.txt'; supported: \.json, \.jsonl"):
        load_prompt_dataset(str(txt))
    with pytest.raises(ValueError, match="does not exist"):
        load_prompt_dataset(str(tmp_path / "missing.jsonl"))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="holds no data files"):
        load_prompt_dataset(str(empty_dir))
    good = _write_jsonl(tmp_path / "ok.jsonl", [{"problem": "q", "answer": "1"}])
    with pytest.raises(ValueError, match="answer_format='latex'; choose one of auto, raw, boxed"):
        load_prompt_dataset(str(good), answer_format="latex")
    with pytest.raises(ValueError, match="limit must be a positive int"):
        load_prompt_dataset(str(good), limit=0)
    lists = _write_jsonl(tmp_path / "chat.jsonl", [{"problem": ["a", "b"], "answer": "1"}])
    with pytest.raises(ValueError, match="holds list values, expected text"):
        load_prompt_dataset(str(lists))


def test_hub_failure_says_how_to_use_a_local_path() -> None:
    with pytest.raises(ValueError, match="could not load hub dataset 'no-such-org/no-such'") as e:
        load_prompt_dataset("no-such-org/no-such")
    assert "pass the local path instead" in str(e.value)


# ----------------------------------------------------------------------------- prompts
@pytest.fixture(scope="module")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer with a ChatML template, trained locally in ~10 ms."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["user\nassistant\nWhat is 2+2?\n" + INSTRUCTION] * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    wrapped.chat_template = CHATML
    return wrapped


def test_build_prompt_ids_renders_question_and_instruction(chat_tokenizer) -> None:
    ids = build_prompt_ids(chat_tokenizer, "What is 2+2?")
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    expected = f"<|im_start|>user\nWhat is 2+2?\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    assert chat_tokenizer.decode(ids) == expected
    assert ids == chat_tokenizer(expected, add_special_tokens=False)["input_ids"]

    custom = chat_tokenizer.decode(build_prompt_ids(chat_tokenizer, "Q", instruction="Be brief."))
    assert custom == "<|im_start|>user\nQ\nBe brief.<|im_end|>\n<|im_start|>assistant\n"
    bare = chat_tokenizer.decode(build_prompt_ids(chat_tokenizer, "Q", instruction=""))
    assert bare == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_build_prompt_ids_without_template_is_a_clear_error(chat_tokenizer) -> None:
    no_template = PreTrainedTokenizerFast(tokenizer_object=chat_tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="has no chat template; .* tokenizer.chat_template ="):
        build_prompt_ids(no_template, "What is 2+2?")
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        build_prompt_ids(chat_tokenizer, "  ")


def test_as_id_list_accepts_every_return_shape() -> None:
    # transformers 4.x: list; 5.x: BatchEncoding; batched forms: [[...]].
    assert _as_id_list([5, 6, 7]) == [5, 6, 7]
    assert _as_id_list(BatchEncoding({"input_ids": [5, 6], "attention_mask": [1, 1]})) == [5, 6]
    assert _as_id_list({"input_ids": [[5, 6]]}) == [5, 6]
    with pytest.raises(ValueError, match="expected one sequence, got 2"):
        _as_id_list([[1], [2]])
