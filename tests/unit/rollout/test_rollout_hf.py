"""HFRolloutEngine: log-probs against teacher forcing, greedy against an argmax loop, seeding,
weight sync, row layout and finish reasons, on a tiny random-weight Qwen3."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers.tiny_qwen3 import tiny_qwen3
from transformers import Qwen3ForCausalLM

from strace_ds.rollout import RolloutEngine, build_rollout_engine
from strace_ds.rollout.base import Generation, SamplingParams
from strace_ds.rollout.hf import HFRolloutEngine

EOS, PAD = 1, 0
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]  # different lengths: left padding is exercised


def tiny_model(seed: int = 0, tie: bool = True) -> Qwen3ForCausalLM:
    return tiny_qwen3(seed=seed, tie=tie, eos=EOS, pad=PAD)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core box: one thread is ~10x faster than two contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Qwen3ForCausalLM:
    return tiny_model()


@pytest.fixture()
def engine(model: Qwen3ForCausalLM) -> HFRolloutEngine:
    return HFRolloutEngine(model, eos_token_id=EOS, pad_token_id=PAD, max_batch_size=4)


def teacher_forced_logprobs(
    model: torch.nn.Module, prompt: list[int], answer: list[int], temperature: float
) -> torch.Tensor:
    """log_softmax(logits / T) of each answer token, one unpadded forward pass: [A]."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = model(ids).logits[0].double()  # [P + A, V]
    logp = torch.log_softmax(logits / temperature, dim=-1)[len(prompt) - 1 : -1]  # [A, V]
    return logp.gather(1, torch.tensor(answer)[:, None])[:, 0]


def check_against_teacher_forcing(
    model: torch.nn.Module, gen: Generation, prompts: list[list[int]], temperature: float
) -> None:
    for i, tokens, logprobs in zip(gen.prompt_index, gen.token_ids, gen.logprobs):
        assert len(tokens) == len(logprobs) > 0
        expected = teacher_forced_logprobs(model, prompts[i], tokens, temperature)
        torch.testing.assert_close(
            torch.tensor(logprobs, dtype=torch.float64), expected, atol=1e-5, rtol=0
        )


def test_is_a_rollout_engine(engine: HFRolloutEngine) -> None:
    assert isinstance(engine, RolloutEngine)
    built = build_rollout_engine("hf", model=engine.model, eos_token_id=EOS, pad_token_id=PAD)
    assert isinstance(built, HFRolloutEngine)
    assert built.model is not engine.model  # its own copy


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(max_new_tokens=12, temperature=1.0, seed=3),
        SamplingParams(max_new_tokens=12, temperature=0.6, seed=4),
        # With top-k/top-p the documented value is still the tempered, untruncated log-prob.
        SamplingParams(max_new_tokens=12, temperature=0.8, top_k=5, top_p=0.9, seed=5),
    ],
    ids=["T1", "T0.6", "T0.8-topk-topp"],
)
def test_logprobs_equal_teacher_forcing(
    model: Qwen3ForCausalLM, engine: HFRolloutEngine, sampling: SamplingParams
) -> None:
    gen = engine.generate(PROMPTS, n=3, sampling=sampling)
    assert len(gen) == 9  # 3 prompts x 3 rows, over 3 generate calls of <= 4 rows
    check_against_teacher_forcing(model, gen, PROMPTS, sampling.temperature)


def test_top_k_restricts_sampled_tokens(model: Qwen3ForCausalLM, engine: HFRolloutEngine) -> None:
    """With top_k=2 every sampled token is one of the two most likely under the model."""
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=2, seed=0)
    gen = engine.generate(PROMPTS, n=4, sampling=sampling)
    for i, tokens in zip(gen.prompt_index, gen.token_ids):
        ids = torch.tensor([PROMPTS[i] + tokens])
        with torch.no_grad():
            logits = model(ids).logits[0, len(PROMPTS[i]) - 1 : -1]  # [A, V]
        top2 = logits.topk(2, dim=-1).indices  # [A, 2]
        assert all(t in top2[j].tolist() for j, t in enumerate(tokens))


def greedy_reference(model: torch.nn.Module, prompt: list[int], steps: int, stops: set[int]):
    """The obviously-correct loop: full forward, argmax, append, stop on a stop id."""
    ids = list(prompt)
    answer: list[int] = []
    logprobs: list[float] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        token = int(logits.argmax())
        answer.append(token)
        logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
        ids.append(token)
        if token in stops:
            break
    return answer, logprobs


def test_greedy_equals_argmax_loop(model: Qwen3ForCausalLM, engine: HFRolloutEngine) -> None:
    gen = engine.generate(PROMPTS, n=2, sampling=SamplingParams(max_new_tokens=10, temperature=0))
    for row, i in enumerate(gen.prompt_index):
        answer, logprobs = greedy_reference(model, PROMPTS[i], 10, {EOS})
        assert gen.token_ids[row] == answer
        assert gen.logprobs[row] == pytest.approx(logprobs, abs=1e-5)
    # greedy rows of one prompt are identical
    assert gen.token_ids[0] == gen.token_ids[1]


def test_stop_token_ends_answer_and_is_kept(
    model: Qwen3ForCausalLM, engine: HFRolloutEngine
) -> None:
    """Make a later greedy token of prompt 0 a stop id: prompt 0 stops there ("stop", token
    kept), and every row ends with a stop id exactly when its reason is "stop"."""
    free, _ = greedy_reference(model, PROMPTS[0], 10, set())
    # the first token from position 2 on that did not occur before: greedy stops right on it
    j = next(j for j in range(2, 10) if free[j] not in free[:j] and free[j] != EOS)
    stop = free[j]
    sampling = SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=[stop])
    gen = engine.generate(PROMPTS, n=1, sampling=sampling)
    assert gen.token_ids[0] == free[: j + 1]
    assert gen.finish_reasons[0] == "stop"
    for tokens, reason in zip(gen.token_ids, gen.finish_reasons):
        stopped = tokens[-1] in (EOS, stop)
        assert reason == ("stop" if stopped else "length")
        assert len(tokens) == 10 or stopped  # no trailing pad, no premature end
        assert all(t not in (EOS, stop) for t in tokens[:-1])


def test_eos_stops_sampled_rows_without_trailing_pad(model: Qwen3ForCausalLM) -> None:
    """Stop on ten ids at once so most sampled rows stop early while others run on: the
    batch is padded after a stop, and the padding must not reach the answers."""
    stops = list(range(20, 30))
    engine = HFRolloutEngine(model, eos_token_id=EOS, pad_token_id=PAD, max_batch_size=16)
    sampling = SamplingParams(max_new_tokens=16, temperature=1.5, stop_token_ids=stops, seed=0)
    gen = engine.generate(PROMPTS, n=5, sampling=sampling)
    lengths = [len(t) for t in gen.token_ids]
    assert min(lengths) < 16 and "stop" in gen.finish_reasons  # the test exercises both
    for tokens, logprobs, reason in zip(gen.token_ids, gen.logprobs, gen.finish_reasons):
        assert len(logprobs) == len(tokens)
        ends_on_stop = tokens[-1] in set(stops) | {EOS}
        assert reason == ("stop" if ends_on_stop else "length")
        assert reason == "stop" or len(tokens) == 16
    check_against_teacher_forcing(model, gen, PROMPTS, 1.5)


def test_grouping_layout(engine: HFRolloutEngine) -> None:
    gen = engine.generate(PROMPTS, n=3, sampling=SamplingParams(max_new_tokens=4, seed=0))
    assert gen.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(gen.token_ids) == len(gen.logprobs) == len(gen.finish_reasons) == 9
    assert gen.weight_version == 0


def test_seeded_calls_repeat_and_leave_global_rng_alone(engine: HFRolloutEngine) -> None:
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, seed=123)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    first = engine.generate(PROMPTS, n=4, sampling=sampling)
    assert torch.equal(torch.get_rng_state(), before)
    second = engine.generate(PROMPTS, n=4, sampling=sampling)
    assert first == second
    other = engine.generate(PROMPTS, n=4, sampling=SamplingParams(max_new_tokens=8, seed=124))
    assert other.token_ids != first.token_ids
    # rows of one prompt are distinct samples, not copies
    assert len({tuple(t) for t in first.token_ids[:4]}) > 1
    # batching is an implementation detail: same seed, same batch size -> same answers even
    # from a fresh engine
    fresh = HFRolloutEngine(engine.model, eos_token_id=EOS, pad_token_id=PAD, max_batch_size=4)
    assert fresh.generate(PROMPTS, n=4, sampling=sampling) == first


def test_sync_weights_matches_second_model(
    model: Qwen3ForCausalLM, engine: HFRolloutEngine
) -> None:
    target = tiny_model(seed=1)
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    sampled = SamplingParams(max_new_tokens=8, temperature=1.0, seed=9)
    reference = HFRolloutEngine(target, eos_token_id=EOS, pad_token_id=PAD, max_batch_size=4)
    before = engine.generate(PROMPTS, n=1, sampling=greedy)
    assert before.token_ids != reference.generate(PROMPTS, n=1, sampling=greedy).token_ids

    # tied model: named_parameters() sends embed_tokens only; lm_head follows through the tie
    engine.sync_weights(target.named_parameters(), version=5)
    assert engine.weight_version == 5
    for mode in (greedy, sampled):
        got, want = engine.generate(PROMPTS, 2, mode), reference.generate(PROMPTS, 2, mode)
        assert got.token_ids == want.token_ids
        flat_got = [x for row in got.logprobs for x in row]
        assert flat_got == pytest.approx([x for row in want.logprobs for x in row], abs=1e-6)
        assert got.weight_version == 5 and want.weight_version == 0
    # the engine copied the values, it does not alias the source module's tensors
    with torch.no_grad():
        target.model.norm.weight.add_(1.0)
    assert not torch.equal(engine.model.model.norm.weight, target.model.norm.weight)


def test_sync_weights_accepts_state_dict_with_lm_head(engine: HFRolloutEngine) -> None:
    target = tiny_model(seed=2)
    engine.sync_weights(target.state_dict().items(), version=1)
    assert torch.equal(engine.model.lm_head.weight, target.lm_head.weight)
    assert (
        engine.model.lm_head.weight.data_ptr() == engine.model.model.embed_tokens.weight.data_ptr()
    )


def test_sync_weights_untied_needs_lm_head() -> None:
    untied = tiny_model(seed=3, tie=False)
    engine = HFRolloutEngine(untied, eos_token_id=EOS, pad_token_id=PAD)
    source = dict(tiny_model(seed=4, tie=False).named_parameters())
    source.pop("lm_head.weight")
    with pytest.raises(ValueError, match=r"missing parameters \['lm_head.weight'\]"):
        engine.sync_weights(source.items(), version=1)
    assert engine.weight_version == 0


def test_sync_weights_reports_unknown_and_shapes(engine: HFRolloutEngine) -> None:
    named = dict(engine.model.named_parameters())
    named["module.extra.weight"] = torch.zeros(3)
    named["model.norm.weight"] = torch.zeros(7)
    with pytest.raises(ValueError) as info:
        engine.sync_weights(named.items(), version=2)
    message = str(info.value)
    assert "unknown names ['module.extra.weight']" in message
    assert "model.norm.weight: got (7,), expected (64,)" in message
    assert "missing parameters ['model.norm.weight']" in message
    assert engine.weight_version == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 0}, "n must be"),
        ({"sampling": SamplingParams(max_new_tokens=0)}, "max_new_tokens"),
        ({"sampling": SamplingParams(temperature=-1)}, "temperature"),
        ({"sampling": SamplingParams(top_p=0)}, "top_p"),
        ({"sampling": SamplingParams(top_k=0)}, "top_k"),
        ({"prompt_ids": [[1], []]}, "prompt_ids"),
    ],
)
def test_invalid_arguments_name_the_field(engine: HFRolloutEngine, kwargs, field) -> None:
    call = {"prompt_ids": PROMPTS, "n": 1, "sampling": SamplingParams()} | kwargs
    with pytest.raises(ValueError, match=field):
        engine.generate(**call)


def test_close_releases_model(model: Qwen3ForCausalLM) -> None:
    engine = HFRolloutEngine(model, eos_token_id=EOS, pad_token_id=PAD)
    engine.close()
    assert engine.model is None
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(PROMPTS, 1, SamplingParams())


def test_default_stop_ids_join_tokenizer_and_model(model: Qwen3ForCausalLM) -> None:
    """No explicit ids: the tokenizer's EOS (3) and the model's (1) both stop; pad from the
    tokenizer; an explicit eos_token_id replaces them all."""
    tokenizer = SimpleNamespace(eos_token_id=3, pad_token_id=2)
    engine = HFRolloutEngine(model, tokenizer=tokenizer)
    assert engine.eos_token_ids == [3, 1] and engine.pad_token_id == 2
    explicit = HFRolloutEngine(model, tokenizer=tokenizer, eos_token_id=[7, 8])
    assert explicit.eos_token_ids == [7, 8]
    bare = HFRolloutEngine(model)  # no tokenizer: the model's EOS, and pad falls back to it
    assert bare.eos_token_ids == [1] and bare.pad_token_id == 1
