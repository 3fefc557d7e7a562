"""Evaluation: pass@k against brute-force enumeration, the benchmark registry and fixtures,
end-to-end runs with fake engines of known accuracy and with the tiny policy, and the command
line (the commands of docs/EVALUATION.md; the SGLang client it builds, against fake servers)."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.evaluation_cli import (
    check_report,
    load_cli,
    localize,
    readme_commands,
    readme_evaluation_commands,
)
from helpers.fake_sglang import FakeSGLang

from strace_ds.data.arithmetic import INSTRUCTION as SYNTHETIC_INSTRUCTION
from strace_ds.data.arithmetic import arithmetic_dataset
from strace_ds.data.prompts import INSTRUCTION
from strace_ds.evaluation import (
    BENCHMARKS,
    default_ks,
    eval_scalars,
    evaluate,
    evaluate_benchmark,
    format_table,
    get_benchmark,
    load_benchmark,
    mean_pass_at_k,
    pass_at_k,
)
from strace_ds.evaluation.benchmarks import integral_number, joined_answer_list
from strace_ds.rewards import RewardPool, grade_answer
from strace_ds.rollout import Generation, RolloutEngine, SamplingParams

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "benchmarks"
HUB_BENCHMARKS = [name for name, spec in BENCHMARKS.items() if spec.hub_id is not None]


# ----------------------------------------------------------------------------- pass@k
def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 10))
def test_pass_at_k_equals_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(
                float(brute_force_pass_at_k(n, c, k)), abs=1e-12
            ), (n, c, k)


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(4, 1, 2) == 0.5  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)  # c/n
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9, abs=1e-15)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 2, 4) == 1.0  # n - c = 3 < k = 4: every 4-subset has a correct one


def test_pass_at_k_stable_for_n_1024() -> None:
    n = 1024
    for c in (0, 1, 2, 7, 100, 512, 1000, 1023, 1024):
        values = []
        for k in default_ks(n):
            value = pass_at_k(n, c, k)
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            assert math.isfinite(value) and 0.0 <= value <= 1.0
            assert value == pytest.approx(float(exact), abs=1e-12), (c, k)
            values.append(value)
        assert values == sorted(values)  # pass@k grows with k


def test_pass_at_k_edges_and_errors() -> None:
    assert pass_at_k(16, 0, 8) == 0.0
    assert pass_at_k(16, 16, 1) == 1.0
    with pytest.raises(ValueError, match=r"k=5 must satisfy 1 <= k <= n=4"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match=r"k=0 must satisfy"):
        pass_at_k(4, 1, 0)
    with pytest.raises(ValueError, match=r"c \(correct samples\) must be in \[0, n=4\], got 5"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="c .* got -1"):
        pass_at_k(4, -1, 1)
    with pytest.raises(ValueError, match="n must be an int"):
        pass_at_k(4.0, 1, 1)  # type: ignore[arg-type]


def test_mean_pass_at_1_is_mean_accuracy() -> None:
    n, c = [8, 8, 8, 8], [0, 3, 8, 5]
    assert mean_pass_at_k(n, c, 1) == pytest.approx(16 / 32, abs=1e-15)
    assert mean_pass_at_k(n, c, 8) == 0.75  # 3 of 4 problems solved at least once
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert default_ks(1) == [1]


# ----------------------------------------------------------------------------- registry
EXPECTED_COLUMNS = {
    "math500": {"problem", "solution", "answer", "subject", "level", "unique_id"},
    "aime24": {"id", "problem", "solution", "answer", "url", "year"},
    "aime25": {"id", "problem", "answer"},
    "amc23": {"id", "question", "answer", "url"},
    "minerva": {"question", "answer"},
    "olympiadbench": {
        "id", "question", "solution", "final_answer", "context", "modality", "difficulty",
        "is_multiple_answer", "unit", "answer_type", "error", "question_type", "subfield",
        "subject", "language",
    },
    "beyondaime": {"problem", "answer"},
}  # fmt: skip


def test_registry_names_and_unknown_name() -> None:
    assert set(HUB_BENCHMARKS) == set(EXPECTED_COLUMNS)
    assert "synthetic" in BENCHMARKS
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'; choose from math500, aime24"):
        get_benchmark("gsm9k")


@pytest.mark.parametrize("name", sorted(EXPECTED_COLUMNS))
def test_fixture_is_in_the_hub_schema(name: str) -> None:
    spec = BENCHMARKS[name]
    rows = [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]
    assert 5 <= len(rows) <= 8
    for row in rows:
        assert set(row) == EXPECTED_COLUMNS[name]
        assert {spec.prompt_column, spec.answer_column} <= set(row)
    dataset = load_benchmark(name, data_dir=FIXTURES)
    assert len(dataset) == len(rows) and dataset.skipped == 0
    for ex, row in zip(dataset.examples, rows):
        assert ex.prompt == row[spec.prompt_column].strip()
        # every gold answer parses and matches itself through the real grader
        assert grade_answer(f"So the answer is \\boxed{{{ex.answer}}}.", ex.answer) == 1.0


def test_answer_normalisation() -> None:
    assert integral_number("27.0") == "27"
    assert integral_number("2.5") == "2.5"
    assert joined_answer_list("['$2^{1009}$']") == "2^{1009}"
    assert joined_answer_list("['$2$', '$3$']") == "2, 3"
    assert joined_answer_list("$x+1$") == "x+1"
    amc = load_benchmark("amc23", data_dir=FIXTURES)
    assert [ex.answer for ex in amc.examples][:2] == ["20", "24"]
    olympiad = load_benchmark("olympiadbench", data_dir=FIXTURES)
    assert olympiad.examples[-1].answer == "2, 3"


def test_missing_local_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has no math500.jsonl; write the HuggingFaceH4/MATH-500"):
        load_benchmark("math500", data_dir=tmp_path)


# ----------------------------------------------------------------------------- fake engines
@pytest.fixture(scope="module")
def tokenizer():
    """The tiny policy's byte-level BPE + ChatML template, trained on the synthetic task."""
    from strace_ds.assets.recipes.arithmetic import _tokenizer_corpus, build_tokenizer

    return build_tokenizer(
        _tokenizer_corpus(arithmetic_dataset("train", 300, seed=0).examples), 512
    )


@pytest.fixture(scope="module")
def pool():
    with RewardPool(num_workers=2, timeout_s=10.0) as reward_pool:
        yield reward_pool


class OracleEngine:
    """Answers ``\\boxed{gold}`` for the first ``c_i`` rows of problem i, ``\\boxed{?}`` after.

    ``correct_per_problem(i, n) -> c_i`` fixes the accuracy, so every count is known. The
    problem is found by its question text inside the decoded prompt.
    """

    def __init__(self, tokenizer, golds: dict[str, str], correct_per_problem) -> None:
        self.tokenizer = tokenizer
        self.golds = golds
        self.correct_per_problem = correct_per_problem
        self.prompts: list[str] = []

    def _find(self, prompt: str) -> tuple[int, str]:
        hits = [(i, q) for i, q in enumerate(self.golds) if q in prompt]
        assert len(hits) == 1, prompt
        return hits[0]

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams):
        eos = self.tokenizer.eos_token_id
        index, tokens, reasons = [], [], []
        for p, ids in enumerate(prompt_ids):
            text = self.tokenizer.decode(ids)
            self.prompts.append(text)
            i, question = self._find(text)
            for row in range(n):
                ok = row < self.correct_per_problem(i, n)
                answer = self.golds[question] if ok else "?"
                body = f"Working... so the answer is \\boxed{{{answer}}}."
                tokens.append(self.tokenizer.encode(body, add_special_tokens=False) + [eos])
                index.append(p)
                reasons.append("stop")
        return Generation(index, tokens, [[0.0] * len(t) for t in tokens], reasons, 7)

    def sync_weights(self, named_tensors, version) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def oracle_for(names: list[str], tokenizer, correct_per_problem) -> OracleEngine:
    golds = {
        ex.prompt: ex.answer
        for name in names
        for ex in load_benchmark(name, data_dir=FIXTURES, limit=8).examples
    }
    return OracleEngine(tokenizer, golds, correct_per_problem)


def test_known_correct_engine_scores_one_on_every_fixture(tokenizer, pool, tmp_path) -> None:
    engine = oracle_for(HUB_BENCHMARKS, tokenizer, lambda i, n: n)
    assert isinstance(engine, RolloutEngine)
    report = evaluate(
        engine, tokenizer, HUB_BENCHMARKS, 2, SamplingParams(), pool,
        data_dir=FIXTURES, out=tmp_path / "r.json", progress=False,
    )  # fmt: skip
    for name in HUB_BENCHMARKS:
        summary = report["benchmarks"][name]
        assert summary["avg@2"] == 1.0 and summary["pass@1"] == 1.0 and summary["pass@2"] == 1.0
        assert summary["grader_errors"] == 0 and summary["grader_timeouts"] == 0
        assert summary["weight_version"] == 7
    assert report["average"] == {"avg@2": 1.0, "pass@1": 1.0, "pass@2": 1.0}
    # the standard instruction is appended once to every hub question
    assert all(p.count(INSTRUCTION) == 1 for p in engine.prompts)
    assert json.loads((tmp_path / "r.json").read_text()) == report


def test_partial_engine_gives_exact_counts(tokenizer, pool) -> None:
    """Problem i gets c_i = i mod 5 correct answers out of k = 4 (c = 0,1,2,3,4,0,1):
    avg@4 = 11/28, pass@1 = mean c_i/4, pass@4 = 5/7 problems with c_i > 0."""
    engine = oracle_for(["math500"], tokenizer, lambda i, n: i % 5)
    dataset = load_benchmark("math500", data_dir=FIXTURES)
    result = evaluate_benchmark(
        engine, tokenizer, dataset, 4, SamplingParams(), pool, name="math500", progress=False
    )
    counts = [p.num_correct for p in result.problems]
    assert counts == [0, 1, 2, 3, 4, 0, 1]
    assert result.avg_at_k == pytest.approx(11 / 28, abs=1e-15)
    assert result.pass_at[1] == pytest.approx(11 / 28, abs=1e-15)
    # pass@2 per problem: 1 - C(4-c,2)/6 = 0, 1/2, 5/6, 1, 1, 0, 1/2
    assert result.pass_at[2] == pytest.approx((0 + 0.5 + 5 / 6 + 1 + 1 + 0 + 0.5) / 7, abs=1e-12)
    assert result.pass_at[4] == pytest.approx(5 / 7, abs=1e-15)
    scalars = eval_scalars(result)
    assert scalars["eval/math500/avg@4"] == pytest.approx(11 / 28)
    assert scalars["eval/math500/pass@4"] == pytest.approx(5 / 7)
    assert set(scalars) == {
        f"eval/math500/{m}"
        for m in ("avg@4", "pass@1", "pass@2", "pass@4", "truncated_frac",
                  "mean_response_tokens", "grader_timeouts", "grader_errors")
    }  # fmt: skip


class ReversingEngine(OracleEngine):
    """Returns the oracle's rows in reverse order (prompt_index reversed with them)."""

    def generate(self, prompt_ids, n, sampling):
        gen = super().generate(prompt_ids, n, sampling)
        rev = slice(None, None, -1)
        return Generation(
            gen.prompt_index[rev], gen.token_ids[rev], gen.logprobs[rev], gen.finish_reasons[rev]
        )


class DroppingEngine(OracleEngine):
    """Loses the last row: the evaluator must refuse rather than mis-score."""

    def generate(self, prompt_ids, n, sampling):
        gen = super().generate(prompt_ids, n, sampling)
        return Generation(gen.prompt_index[:-1], gen.token_ids[:-1], gen.logprobs[:-1],
                          gen.finish_reasons[:-1])  # fmt: skip


def test_rows_are_attributed_by_prompt_index(tokenizer, pool) -> None:
    dataset = load_benchmark("math500", data_dir=FIXTURES)
    golds = {ex.prompt: ex.answer for ex in dataset}
    engine = ReversingEngine(tokenizer, golds, lambda i, n: i % 5)
    result = evaluate_benchmark(engine, tokenizer, dataset, 4, SamplingParams(), pool)
    assert [p.num_correct for p in result.problems] == [0, 1, 2, 3, 4, 0, 1]
    with pytest.raises(RuntimeError, match="expected 4 rows for each of 7 prompts"):
        evaluate_benchmark(
            DroppingEngine(tokenizer, golds, lambda i, n: n), tokenizer, dataset, 4,
            SamplingParams(), pool,
        )  # fmt: skip


def test_synthetic_prompts_keep_their_own_instruction(tokenizer, pool) -> None:
    dataset = arithmetic_dataset("test", size=4, seed=0)
    engine = OracleEngine(tokenizer, {ex.prompt: ex.answer for ex in dataset}, lambda i, n: n)
    result = evaluate_benchmark(engine, tokenizer, dataset, 2, SamplingParams(), pool)
    assert result.avg_at_k == 1.0 and result.name == "synthetic:test"
    for prompt in engine.prompts:
        assert prompt.count(SYNTHETIC_INSTRUCTION.strip()) == 1 and INSTRUCTION not in prompt


def test_invalid_arguments(tokenizer, pool) -> None:
    engine = oracle_for(["aime25"], tokenizer, lambda i, n: n)
    dataset = load_benchmark("aime25", data_dir=FIXTURES)
    with pytest.raises(ValueError, match=r"ks=\[1, 8\]: every k must be an int in \[1, 4\]"):
        evaluate_benchmark(engine, tokenizer, dataset, 4, SamplingParams(), pool, ks=[1, 8])
    with pytest.raises(ValueError, match="k .samples per problem. must be >= 1"):
        evaluate_benchmark(engine, tokenizer, dataset, 0, SamplingParams(), pool)
    with pytest.raises(ValueError, match="unknown benchmark 'aime26'"):
        evaluate(engine, tokenizer, "aime25,aime26", 1, SamplingParams(), pool, FIXTURES)


# ----------------------------------------------------------------------------- tiny policy
@pytest.fixture(scope="module")
def tiny_engine():
    from transformers import AutoTokenizer

    from strace_ds.assets import default_policy_dir
    from strace_ds.rollout.hf import HFRolloutEngine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared box: one thread is much faster
    path = default_policy_dir()
    tok = AutoTokenizer.from_pretrained(path)
    yield HFRolloutEngine(path, tokenizer=tok, max_batch_size=64), tok
    torch.set_num_threads(threads)


def test_tiny_policy_end_to_end_report_is_consistent(tiny_engine, pool, tmp_path) -> None:
    engine, tok = tiny_engine
    sampling = SamplingParams(max_new_tokens=40, temperature=1.0, seed=0)
    out = tmp_path / "results.json"
    report = evaluate(
        engine, tok, ["synthetic", "math500", "aime24"], 4, sampling, pool,
        data_dir=FIXTURES, limit=6, out=out, progress=False,
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved == report and saved["ks"] == [1, 2, 4]
    for name, b in saved["benchmarks"].items():
        problems = b["problems"]
        assert b["num_problems"] == len(problems) == 6
        assert b["num_samples"] == 24 == sum(p["n"] for p in problems)
        assert all(p["n"] == len(p["samples"]) == 4 for p in problems)
        correct = sum(p["correct"] for p in problems)
        assert (
            correct == b["num_correct"] == sum(s["correct"] for p in problems for s in p["samples"])
        )
        assert b["avg@4"] == pytest.approx(correct / 24, abs=1e-15)
        assert b["pass@1"] == pytest.approx(
            sum(p["correct"] / p["n"] for p in problems) / 6, abs=1e-15
        )
        assert b["pass@4"] == pytest.approx(sum(p["correct"] > 0 for p in problems) / 6, abs=1e-15)
        for p in problems:
            assert p["pass@2"] == pytest.approx(pass_at_k(4, p["correct"], 2), abs=1e-15)
            for s in p["samples"]:
                # the pool's verdict equals an independent in-process grading of the text
                assert s["reward"] == grade_answer(s["text"], p["gold"]), (name, s["text"])
                assert s["correct"] == (s["reward"] > 0.5)
                assert 1 <= s["num_tokens"] <= 40 and s["finish_reason"] in ("stop", "length")
        assert b["weight_version"] == 0
    for key, value in saved["average"].items():
        assert value == pytest.approx(sum(b[key] for b in saved["benchmarks"].values()) / 3)
    table = format_table(report)
    assert table.splitlines()[0].split() == [
        "benchmark", "problems", "avg@4", "pass@1", "pass@2", "pass@4", "trunc%", "tokens"
    ]  # fmt: skip
    assert [line.split()[0] for line in table.splitlines()[2:]] == [
        "synthetic", "math500", "aime24", "average"
    ]  # fmt: skip


# ----------------------------------------------------------------------------- command line
def test_readme_evaluation_commands_are_all_tested() -> None:
    """Every command of docs/EVALUATION.md's block parses as written, and is run by the
    test of its tier (hf: ``tests/e2e/test_evaluation_commands.py``; sglang:
    ``tests/sglang/test_sglang_server_real.py``, real server)."""
    cli = load_cli()
    commands = readme_evaluation_commands()
    assert len(commands) >= 3
    for argv in commands:
        args = cli.parse_args(argv)  # as written: no unknown flag, no bad value
        cli.parse_args(localize(argv, "M", Path("r.json"), "http://127.0.0.1:1"))
        assert args.rollout in ("hf", "sglang")
    hf, sglang = readme_commands("hf"), readme_commands("sglang")
    assert sorted(i for i, _ in hf + sglang) == list(range(len(commands)))
    assert hf and sglang  # the paper's table goes through SGLang
    tests = Path(__file__).resolve().parents[2]
    assert 'readme_commands("hf")' in (tests / "e2e" / "test_evaluation_commands.py").read_text()
    assert 'readme_commands("sglang")' in (
        tests / "sglang" / "test_sglang_server_real.py").read_text()


def test_cli_builds_sglang_engine_through_registry(monkeypatch) -> None:
    """``--rollout sglang`` asks the registry for a read-only client of every URL: no
    weights_dir, the servers' own weight version; then checks the served model."""
    import strace_ds.rollout as rollout

    cli = load_cli()
    calls: list[Any] = []

    class Recorder:
        def check_model(self, model: str) -> None:
            calls.append(("check_model", model))

    def build(kind: str, **kwargs: Any) -> Recorder:
        calls.append((kind, kwargs))
        return Recorder()

    monkeypatch.setattr(rollout, "build_rollout_engine", build)
    urls = "http://h1:30000,http://h2:30001"
    args = cli.parse_args(["--rollout", "sglang", "--sglang-url", urls])
    assert isinstance(cli.build_engine(args, "M", None), Recorder)
    assert calls == [("sglang", {"urls": urls, "weight_version": None}), ("check_model", "M")]
    calls.clear()
    cli.build_engine(cli.parse_args(["--rollout", "sglang", "--skip-model-check"]), "M", None)
    assert calls == [("sglang", {"urls": "http://localhost:30000", "weight_version": None})]


@pytest.fixture
def fake_servers(tiny_policy):
    servers = [FakeSGLang(), FakeSGLang()]
    for s in servers:
        s.model_path, s.version = str(tiny_policy), "5"
    yield servers
    for s in servers:
        s.close()


def test_cli_sglang_engine_on_fake_servers(fake_servers, tiny_policy, tmp_path) -> None:
    """The engine the CLI builds, over HTTP: two URLs, read-only, clear errors."""
    from strace_ds.rollout.sglang import SGLangRolloutEngine

    cli = load_cli()
    a, b = fake_servers
    argv = ["--rollout", "sglang", "--sglang-url", f"{a.url}, {b.url}"]
    engine = cli.build_engine(cli.parse_args(argv), str(tiny_policy), None)
    assert isinstance(engine, SGLangRolloutEngine)
    assert engine.urls == [a.url, b.url] and engine.weights_dir is None
    assert engine.weight_version == 5  # adopted from the servers, not assumed
    gen = engine.generate([[1], [2]], 2, SamplingParams(max_new_tokens=4))
    assert gen.weight_version == 5 and gen.prompt_index == [0, 0, 1, 1]
    assert all(any(p == "/generate" for _, p, _ in s.requests) for s in fake_servers)
    with pytest.raises(ValueError, match="sync_mode='disk' needs weights_dir"):
        engine.sync_weights(iter([("w", torch.zeros(1))]), 6)
    assert engine.weight_version == 5  # a refused sync changes nothing
    assert all(m == "GET" or p == "/generate" for s in fake_servers for m, p, _ in s.requests)
    engine.close()

    b.model_path = "/elsewhere/Other-Model"
    with pytest.raises(SystemExit, match=rf"{b.url} serves '/elsewhere/Other-Model'") as exc:
        cli.build_engine(cli.parse_args(argv), str(tiny_policy), None)
    assert f"{a.url} serves" not in str(exc.value)  # only the wrong server is named
    assert "--skip-model-check" in str(exc.value)
    cli.build_engine(cli.parse_args([*argv, "--skip-model-check"]), str(tiny_policy), None).close()
    b.model_path = str(tiny_policy) + "/"  # the same directory, spelt differently
    cli.build_engine(cli.parse_args(argv), str(tiny_policy), None).close()

    b.version = "6"
    with pytest.raises(SystemExit, match=rf"different weight versions \({a.url}: '5', {b.url}"):
        cli.build_engine(cli.parse_args(argv), str(tiny_policy), None)
    a.close()
    with pytest.raises(SystemExit, match=rf"--sglang-url .*no healthy SGLang server at\n  {a.url}"):
        cli.build_engine(cli.parse_args(argv), str(tiny_policy), None)


@pytest.mark.filterwarnings("ignore:SGLang ignores sampling_seed")
def test_cli_main_evaluates_through_sglang(fake_servers, tiny_policy, tmp_path) -> None:
    """``main`` end to end over the SGLang client (fake servers: every answer is wrong)."""
    out = tmp_path / "results.json"
    urls = ",".join(s.url for s in fake_servers)
    argv = ["--model", str(tiny_policy), "--benchmarks", "synthetic,aime24", "--data-dir",
            str(FIXTURES), "--k", "2", "--limit", "3", "--max-new-tokens", "4", "--rollout",
            "sglang", "--sglang-url", urls, "--reward-workers", "1", "--out", str(out)]
    report = load_cli().main(argv)
    assert check_report(out, argv) == report
    for b in report["benchmarks"].values():
        assert b["avg@2"] == 0.0 and b["weight_version"] == 5
