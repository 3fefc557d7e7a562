"""The embedded tiny Qwen3 policy: tokenizer, chat template, build determinism, cache, accuracy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from strace_ds import assets
from strace_ds.assets.recipes import arithmetic as tiny
from strace_ds.data.arithmetic import INSTRUCTION, arithmetic_dataset

FEW_STEPS = 3


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete build with a handful of SFT steps (seconds)."""
    return tiny.build_tiny_policy(tmp_path_factory.mktemp("tiny") / "a", sft_steps=FEW_STEPS)


def test_build_is_deterministic(built: Path, tmp_path: Path) -> None:
    again = tiny.build_tiny_policy(tmp_path / "b", sft_steps=FEW_STEPS)
    w1, w2 = load_file(built / "model.safetensors"), load_file(again / "model.safetensors")
    assert w1.keys() == w2.keys() and len(w1) > 10
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k
    assert (built / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    info1, info2 = (json.loads((p / tiny.BUILD_INFO).read_text()) for p in (built, again))
    assert info1["sft_final_loss"] == info2["sft_final_loss"]
    assert info1["sampled_accuracy_t1"] == info2["sampled_accuracy_t1"]


def test_other_seed_gives_other_weights(built: Path, tmp_path: Path) -> None:
    other = tiny.build_tiny_policy(tmp_path / "s1", seed=1, sft_steps=FEW_STEPS)
    w0, w1 = load_file(built / "model.safetensors"), load_file(other / "model.safetensors")
    assert not torch.equal(w0["model.layers.0.mlp.up_proj.weight"],
                           w1["model.layers.0.mlp.up_proj.weight"])


def test_reloads_with_auto_classes(built: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(built)
    tok = AutoTokenizer.from_pretrained(built)
    cfg = model.config
    assert isinstance(model, Qwen3ForCausalLM)
    assert cfg.head_dim * cfg.num_attention_heads == cfg.hidden_size
    assert cfg.vocab_size == len(tok) and model.dtype == torch.float32
    assert (cfg.eos_token_id, cfg.pad_token_id) == (tok.eos_token_id, tok.pad_token_id) == (2, 0)
    raw = json.loads((built / "config.json").read_text())
    assert raw["torch_dtype"] == "float32" and raw["model_type"] == "qwen3"
    gen = json.loads((built / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["pad_token_id"]) == (2, 0)
    # 100k-1M parameters: small enough for CPU RL, large enough to learn the task.
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 1_000_000
    ids = tok("Tom has 3 apples.", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_tokenizer_specials_digits_and_round_trip(built: Path) -> None:
    tok = AutoTokenizer.from_pretrained(built)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert 300 < len(tok) <= 512
    # Every digit is its own token, so numbers are spelled digit by digit.
    assert tok.tokenize("4096") == ["4", "0", "9", "6"]
    ds = arithmetic_dataset("test", size=50, seed=0)
    for ex in ds.examples:
        for text in (ex.prompt, ex.meta["solution"], "unseen: é ∑ 𝛑 ~"):
            assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    # Answers are short: the longest (two-step) solution plus <|im_end|> stays under 40.
    lengths = [len(tok(ex.meta["solution"] + "<|im_end|>").input_ids) for ex in ds.examples]
    assert max(lengths) <= 40 and min(lengths) >= 15


def test_chat_template_is_chatml(built: Path) -> None:
    tok = AutoTokenizer.from_pretrained(built)
    q = "Tom has 3 apples and buys 5 more. How many apples does he have now?" + INSTRUCTION
    text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True,
                                  add_generation_prompt=True, return_dict=False)
    assert ids[0] == 1 and ids[-1] != 2  # starts <|im_start|>, open for the answer
    assert ids == tok(text, add_special_tokens=False).input_ids


def test_sft_labels_cover_only_the_answer(built: Path) -> None:
    tok = AutoTokenizer.from_pretrained(built)
    ex = arithmetic_dataset("train", size=1, seed=0).examples[0]
    ids, labels = tiny.encode_sft_example(tok, ex)
    n_prompt = len(tok(tiny.chat_prompt(tok, ex.prompt), add_special_tokens=False).input_ids)
    assert len(ids) == len(labels)
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == ex.meta["solution"]


def test_sft_lowers_the_answer_loss(built: Path) -> None:
    tok = AutoTokenizer.from_pretrained(built)
    cfg = tiny.TinyBuildConfig(sft_steps=15, sft_batch_size=32)
    torch.manual_seed(0)
    model = tiny.build_model(cfg, tok)
    losses = tiny.run_sft(model, tok, arithmetic_dataset("train", size=15 * 32).examples, cfg)
    assert len(losses) == 15
    # Starts near ln(vocab) = ln(452) ~ 6.1 (uniform guess); 15 steps learn the template.
    assert 5.0 < losses[0] < 7.0
    assert sum(losses[-3:]) / 3 < losses[0] - 2.0


def test_build_info_is_recorded(built: Path) -> None:
    info = json.loads((built / tiny.BUILD_INFO).read_text())
    cfg = tiny.TinyBuildConfig(sft_steps=FEW_STEPS)
    assert info["digest"] == cfg.digest() and info["config"]["sft_steps"] == FEW_STEPS
    assert 0.0 <= info["sampled_accuracy_t1"] <= 1.0 and 0.0 <= info["greedy_accuracy"] <= 1.0
    assert info["build_seconds"] >= info["sft_seconds"] > 0
    model = AutoModelForCausalLM.from_pretrained(built)
    assert info["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert info["vocab_size"] == len(AutoTokenizer.from_pretrained(built))
    assert 15 <= info["mean_answer_tokens_t1"] <= 48  # 48 = the sampling cap
    assert 0.0 <= info["boxed_rate_t1"] <= 1.0 and 0.0 <= info["accuracy_when_boxed_t1"] <= 1.0
    # accuracy = boxed_rate * accuracy_when_boxed (both over the same 200 answers)
    assert info["sampled_accuracy_t1"] == pytest.approx(
        info["boxed_rate_t1"] * info["accuracy_when_boxed_t1"], abs=1e-4)


def test_reloaded_model_reproduces_the_build_measurement(built: Path) -> None:
    info = json.loads((built / tiny.BUILD_INFO).read_text())
    model = AutoModelForCausalLM.from_pretrained(built).eval()
    tok = AutoTokenizer.from_pretrained(built)
    test = arithmetic_dataset("test", size=200, seed=0).examples
    # Same problems, sampling seed and thread count: the saved weights must sample exactly
    # the answers measured in memory during the build (their mean length is ~40 tokens of
    # near-random text after 3 SFT steps, so any difference shows).
    with tiny.single_thread():
        report = tiny.accuracy_report(model, tok, test, temperature=1.0, seed=0)
    assert round(report["mean_answer_tokens"], 2) == info["mean_answer_tokens_t1"]
    assert report["accuracy"] == info["sampled_accuracy_t1"]
    with pytest.raises(ValueError, match="n must be >= 1"):
        tiny.measure_sampled_accuracy(built, n=0)


def test_teacher_drops_the_box_at_the_given_rate() -> None:
    examples = arithmetic_dataset("train", size=2000, seed=0).examples
    rng = random.Random(0)
    targets = [tiny.teacher_solution(ex, 0.6, rng) for ex in examples]
    unboxed = [t != ex.meta["solution"] for t, ex in zip(targets, examples)]
    # Binomial(2000, 0.6): std 0.011, so +-0.04 is over 3.5 sigma.
    assert abs(sum(unboxed) / len(unboxed) - 0.6) < 0.04
    for t, ex, u in zip(targets, examples, unboxed):
        if u:  # same working, same answer, only the box is gone
            assert t == ex.meta["solution"].replace(f"\\boxed{{{ex.answer}}}", ex.answer)
            assert tiny.extract_boxed(t) is None and t.endswith(f"The answer is {ex.answer}.")
    assert all(tiny.teacher_solution(ex, 0.0, rng) == ex.meta["solution"] for ex in examples)


def test_bad_build_config_raises() -> None:
    with pytest.raises(ValueError, match=r"sft_unboxed_rate must be in \[0, 1\)"):
        tiny.TinyBuildConfig(sft_unboxed_rate=1.0)
    with pytest.raises(ValueError, match="hidden_size must be divisible"):
        tiny.TinyBuildConfig(hidden_size=130)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 3 + 5 = 8. The answer is \\boxed{8}.", "8"),
        ("\\boxed{1} then \\boxed{ 2 }", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("no box here", None),
        ("\\boxed{12", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert tiny.extract_boxed(text) == expected


def test_cache_reuses_and_guards(built: Path, tmp_path: Path, monkeypatch) -> None:
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert tiny.build_tiny_policy(built, sft_steps=FEW_STEPS) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(ValueError, match="another config.*force=True"):
        tiny.build_tiny_policy(built, sft_steps=FEW_STEPS + 1)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a tiny-policy build"):
        tiny.build_tiny_policy(stranger, sft_steps=FEW_STEPS)
    with pytest.raises(ValueError, match="not a tiny-policy build"):
        tiny.build_tiny_policy(stranger, sft_steps=FEW_STEPS, force=True)
    assert (stranger / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="sft_steps must be >= 1"):
        tiny.build_tiny_policy(tmp_path / "x", sft_steps=0)


def test_default_dir_honours_env_and_failed_build_leaves_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("STRACE_DS_CACHE", str(tmp_path))

    def killed(tmp: Path, cfg: tiny.TinyBuildConfig) -> dict:
        (tmp / "config.json").write_text("{}")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "_build_into", killed)
    with pytest.raises(KeyboardInterrupt):
        tiny.build_tiny_policy(sft_steps=2)
    assert list(tmp_path.iterdir()) == []  # neither a half cache nor a temp dir
    monkeypatch.undo()
    monkeypatch.setenv("STRACE_DS_CACHE", str(tmp_path))
    out = tiny.build_tiny_policy(sft_steps=2)
    assert out == tmp_path / f"tiny-qwen3-{tiny.TinyBuildConfig(sft_steps=2).digest()}"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert tiny.build_tiny_policy(sft_steps=2, force=True) == out
    assert (out / "model.safetensors").stat().st_mtime_ns != stamp
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_cli_reuses_an_existing_build(built: Path, capsys: pytest.CaptureFixture) -> None:
    tiny.main(["--out", str(built), "--sft-steps", str(FEW_STEPS)])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(built)
    assert json.loads(out.split("\n", 1)[1])["digest"] == tiny.TinyBuildConfig(
        sft_steps=FEW_STEPS).digest()


def test_shipped_policy_is_the_pinned_default_build() -> None:
    """The shipped copy is the recipe's default config, with the recorded weights."""
    path = tiny.default_policy_dir()
    info = json.loads((path / tiny.BUILD_INFO).read_text())
    assert info["digest"] == tiny.TinyBuildConfig().digest(), (
        "the recipe changed: regenerate the shipped policy (python -m "
        "strace_ds.assets.recipes.arithmetic --out "
        "strace_ds/assets/tiny-qwen3 --force) and update SHIPPED_SHA256"
    )
    assert tiny.file_sha256(path / "model.safetensors") == tiny.SHIPPED_SHA256
    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == info["num_parameters"] == 451_840
    assert len(AutoTokenizer.from_pretrained(path)) == info["vocab_size"]


def test_missing_shipped_policy_names_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(assets, "SHIPPED_DIR", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="regenerate it with"):
        tiny.default_policy_dir()
