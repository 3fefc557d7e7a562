"""Bad inputs are refused at start-up with the field, file or row named, never a traceback.

Config values (non-finite floats, null for a non-optional field, negative weight decay or
stop_after, a missing local ``--model`` path), config files (YAML/JSON syntax, not UTF-8,
``1e-4`` read as a string by PyYAML) and dataset files (empty, not UTF-8, a broken JSON line,
list/dict answers).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest

from strace_ds.config import TrainConfig
from strace_ds.data.loading import load_prompt_dataset

REPO = Path(__file__).resolve().parents[3]
TRAIN = REPO / "scripts" / "train.py"


def _train_module():
    spec = importlib.util.spec_from_file_location("_train_cli", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``scripts/train.py argv`` must exit 2 with exactly one ``train.py: error: ...`` line."""
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exc:
        mp.setattr(sys, "argv", [str(TRAIN)])  # argparse's prog, as when run as a script
        _train_module().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("train.py: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- config values
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reward_timeout_s": math.inf}, "reward_timeout_s must be a finite number, got inf"),
        ({"temperature": math.nan}, "temperature must be a finite number, got nan"),
        ({"temperature": math.inf}, "temperature must be a finite number, got inf"),
        ({"eval_temperature": math.inf}, "eval_temperature must be a finite number"),
        ({"lr": -math.inf}, "lr must be a finite number, got -inf"),
        ({"grad_clip": math.inf}, "grad_clip must be a finite number"),
        ({"weight_decay": math.nan}, "weight_decay must be a finite number"),
        ({"clip_high": math.inf}, "clip_high must be a finite number"),
        ({"top_p": math.nan}, "top_p must be a finite number"),
        ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
        ({"stop_after": -1}, "stop_after must be >= 1"),
        ({"stop_after": 0}, "stop_after must be >= 1"),
        ({"steps": None}, "steps must not be null"),
        ({"loss": None}, "loss must not be null"),
        ({"export": None}, "export must not be null"),
    ],
)
def test_bad_values_are_refused_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_optional_fields_still_take_null_and_finite_values():
    cfg = TrainConfig(stop_after=None, lam=None, model=None, weight_decay=0.1)
    assert (cfg.stop_after, cfg.lam, cfg.weight_decay) == (None, None, 0.1)
    assert TrainConfig(stop_after=1, lr=3, temperature=0.7).lr == 3


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--reward_timeout_s", "inf"], "reward_timeout_s must be a finite number, got inf"),
        (["--temperature", "nan"], "temperature must be a finite number, got nan"),
        (["--steps", "null"], "steps must not be null"),
        (["--weight_decay", "-0.01"], "weight_decay must be >= 0"),
        (["--stop_after", "-2"], "stop_after must be >= 1"),
    ],
)
def test_cli_refuses_bad_values_in_one_line(argv, match, capsys):
    assert match in _cli_error(argv, capsys)


# ----------------------------------------------------------------------------- --model paths
@pytest.mark.parametrize("model", ["./no-such-model", "/no/such/model", "a/b/c", "~/no-such-m"])
def test_missing_local_model_path_is_refused(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=rf"model: local path {model!r} does not exist"):
        TrainConfig(model=model)


def test_hub_ids_and_existing_paths_are_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(model="Qwen/Qwen3-1.7B").model == "Qwen/Qwen3-1.7B"
    assert TrainConfig(model="gpt2").model == "gpt2"
    (tmp_path / "my" / "policy").mkdir(parents=True)
    assert TrainConfig(model="./my/policy").model == "./my/policy"
    assert TrainConfig(model=str(tmp_path / "my")).model == str(tmp_path / "my")


def test_cli_missing_model_path(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "local path './x' does not exist" in _cli_error(["--model", "./x"], capsys)


def test_cli_failed_checkpoint_save_is_one_line_exit_1(capsys, monkeypatch):
    """A save that fails mid-run (a full disk) ends the CLI with the error's one line, exit 1,
    and the trainer still closed (its run lock released); STRACE_DS_TRACEBACK=1 re-raises."""
    import strace_ds.train.loop as loop
    from strace_ds.storage.checkpoint import CheckpointSaveError

    closed = []

    class FullDisk:
        def __init__(self, config):
            pass

        def train(self):
            raise CheckpointSaveError("checkpoint step_000002 was not saved: the disk is full\n"
                                      "  (12.0 MiB free of 1.0 GiB on /x)")

        def close(self):
            closed.append(True)

    monkeypatch.setattr(loop, "Trainer", FullDisk)
    monkeypatch.setattr(sys, "argv", [str(TRAIN)])
    module = _train_module()
    assert module.main([]) == 1
    err = capsys.readouterr().err
    assert err == ("train.py: error: checkpoint step_000002 was not saved: the disk is full "
                   "(12.0 MiB free of 1.0 GiB on /x)\n"), err
    assert closed == [True]
    monkeypatch.setenv("STRACE_DS_TRACEBACK", "1")
    with pytest.raises(CheckpointSaveError, match="the disk is full"):
        module.main([])
    assert closed == [True, True]


# ----------------------------------------------------------------------------- config files
def test_yaml_exponent_numbers_are_floats(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\nweight_decay: 1E-2\nreward_timeout_s: 5\nclip_high: 2.8e-1\n")
    cfg = TrainConfig.from_file(path)
    assert (cfg.lr, cfg.weight_decay, cfg.reward_timeout_s, cfg.clip_high) == (1e-4, 0.01, 5, 0.28)
    assert isinstance(cfg.lr, float)
    path.write_text("lr: fast\n")
    with pytest.raises(ValueError, match="lr must be a number, got 'fast'"):
        TrainConfig.from_file(path)
    path.write_text("steps: 1e3\n")  # an int field keeps its strict check
    with pytest.raises(ValueError, match="steps must be an integer, got '1e3'"):
        TrainConfig.from_file(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("steps: null\n", "steps must not be null"),
        ("temperature: .nan\n", "temperature must be a finite number, got nan"),
        ("reward_timeout_s: .inf\n", "reward_timeout_s must be a finite number, got inf"),
        ("lr: inf\n", "lr must be a finite number, got inf"),
        ("weight_decay: -1e-2\n", "weight_decay must be >= 0"),
    ],
)
def test_bad_yaml_values_name_the_field(tmp_path, text, match):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_file(path)


def test_yaml_and_json_syntax_errors_are_one_line_with_file_and_position(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 3\n  lr: [1,\n")
    with pytest.raises(ValueError) as exc:
        TrainConfig.from_file(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"config file {str(path)!r}" in msg
    assert "line 2, column 5" in msg and "invalid YAML" in msg
    jpath = tmp_path / "run.json"
    jpath.write_text('{"steps": 3,\n "lr": }\n')
    with pytest.raises(ValueError) as exc:
        TrainConfig.from_file(jpath)
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"config file {str(jpath)!r}" in msg and "line 2, column 8" in msg
    jpath.write_text('{"temperature": NaN}')
    with pytest.raises(ValueError, match="temperature must be a finite number, got nan"):
        TrainConfig.from_file(jpath)


def test_config_file_not_utf8_or_empty(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("steps: 3\nrun_name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"run\.yaml' is not UTF-8 text: byte 0xe9 on line 2"):
        TrainConfig.from_file(path)
    path.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="run.yaml' is empty"):
        TrainConfig.from_file(path)
    path.write_text("1: 2\nsteps: 3\n")
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_file(path)


def test_cli_yaml_syntax_error_one_line_exit_2_no_traceback(tmp_path):
    """End to end through ``python scripts/train.py``: what the user actually sees."""
    path = tmp_path / "run.yaml"
    path.write_text("steps: 3\n  lr: [1,\n")
    proc = subprocess.run(
        [sys.executable, str(TRAIN), "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"train.py: error: config file {str(path)!r}: invalid YAML at line 2, column 5: "
        "mapping values are not allowed here"
    ]


def test_cli_file_errors_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"steps: \xff\n")
    assert "not UTF-8 text" in _cli_error(["--config", str(bad)], capsys)
    bad.write_text("lr: 1e-4\nsteps: null\n")
    assert "steps must not be null" in _cli_error(["--config", str(bad)], capsys)
    good = tmp_path / "good.yaml"
    good.write_text("lr: 1e-4\n")
    cfg = _train_module().parse_args(["--config", str(good), "--steps", "3"])
    assert (cfg.lr, cfg.steps) == (1e-4, 3)


# ----------------------------------------------------------------------------- dataset files
@pytest.fixture
def _isolated_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.usefixtures("_isolated_hf")
@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("train.jsonl", b""),
        ("train.jsonl", b"\n \n"),
        ("train.json", b""),
        ("train.json", b"[]\n"),
        ("train.csv", b""),
        ("train.parquet", b""),
    ],
)
def test_empty_dataset_file_is_named(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"{path.name}' is empty"):
        load_prompt_dataset(str(path))


@pytest.mark.usefixtures("_isolated_hf")
def test_files_with_columns_but_no_rows(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("problem,answer\n")
    with pytest.raises(ValueError, match="train.csv' has a header line but no rows"):
        load_prompt_dataset(str(path))
    parquet = tmp_path / "train.parquet"
    datasets.Dataset.from_dict({"problem": [], "answer": []}).to_parquet(str(parquet))
    with pytest.raises(ValueError, match=r"train.parquet' is empty \(no rows\)"):
        load_prompt_dataset(str(parquet))


@pytest.mark.usefixtures("_isolated_hf")
@pytest.mark.parametrize("name", ["train.jsonl", "train.csv", "train.json"])
def test_non_utf8_dataset_file_names_file_and_line(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".csv"):
        text = "problem,answer\ncaf\xe9?,3\n"
    elif name.endswith(".jsonl"):
        text = '{"problem": "q", "answer": "1"}\n{"problem": "caf\xe9?", "answer": "3"}\n'
    else:
        text = '[{"problem": "q", "answer": "1"},\n {"problem": "caf\xe9?", "answer": "3"}]'
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{path.name}' is not UTF-8 text: byte 0xe9 on line 2"):
        load_prompt_dataset(str(path))


@pytest.mark.usefixtures("_isolated_hf")
def test_broken_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n{"problem": "c"}\n'
    )
    with pytest.raises(ValueError, match=r"train.jsonl' line 2 \(row 1\) is not valid JSON"):
        load_prompt_dataset(str(path))
    whole = tmp_path / "train.json"
    whole.write_text('[{"problem": "a", "answer": "1"},\n {"problem": "b", "answer": }]')
    with pytest.raises(ValueError, match=r"train.json' is not valid JSON: .* at line 2"):
        load_prompt_dataset(str(whole))


@pytest.mark.usefixtures("_isolated_hf")
@pytest.mark.parametrize(
    ("rows", "row", "kind"),
    [
        ([{"problem": "a", "answer": [1, 2]}], 0, "list"),
        ([{"problem": "a", "answer": {"x": 1}}, {"problem": "b", "answer": {"x": 2}}], 0, "dict"),
        ([{"problem": "a", "answer": "1"}, {"problem": "b", "answer": [1, 2]}], 1, "list"),
        ([{"problem": "a", "answer": None}, {"problem": "b", "answer": [1, 2]}], 1, "list"),
    ],
)
def test_list_or_dict_answers_name_the_row(tmp_path, rows, row, kind):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"row {row} .*answer_column='answer' holds a {kind}"):
        load_prompt_dataset(str(path))
    # the row is the file's, also when the rows are shuffled
    with pytest.raises(ValueError, match=rf"row {row} "):
        load_prompt_dataset(str(path), shuffle_seed=3)
