"""SGLang client reliability, against the scripted fake server (no real SGLang needed).

1. **Deadlines.** Every request has one overall wall-clock deadline (``timeout_s``, the trainer's
   ``--sglang_timeout_s``), retries and backoffs included: a server that trickles bytes, never
   answers, or refuses connections turns into :class:`SGLangServerError` naming the URL and the
   operation (generate / update_weights / health) within 2 x the deadline.
2. **Replies are validated.** A ``/generate`` answer with out-of-vocabulary, negative, float or
   bool token ids, more than ``max_new_tokens`` tokens, NaN / positive log-probs, the wrong
   number of answers, missing ``meta_info`` fields or a malformed shape is rejected with a
   ``ValueError`` naming the URL and the field, never trained on and never a bare
   ``AttributeError``/``TypeError``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.fake_sglang import HANG, FakeSGLang, Trickle
from helpers.fake_sglang import sglang_answer as _answer

from strace_ds.config import TrainConfig
from strace_ds.rollout.base import SamplingParams
from strace_ds.rollout.sglang import SGLangRolloutEngine, SGLangServerError

DEADLINE_S = 1.5
VOCAB = 452  # the embedded tiny policy's


def _engine(url: str, tmp_path: Path, **kw: Any) -> SGLangRolloutEngine:
    kw = {"max_retries": 2, "backoff_s": 0.05, "timeout_s": DEADLINE_S, "vocab_size": VOCAB,
          **kw}
    return SGLangRolloutEngine(url, tmp_path / "weights", **kw)


def _raises_in_time(call: Any, match: str, deadline_s: float = DEADLINE_S) -> float:
    """Run ``call``; it must raise SGLangServerError matching ``match`` within 2 x deadline."""
    start = time.monotonic()
    with pytest.raises(SGLangServerError, match=match):
        call()
    elapsed = time.monotonic() - start
    assert elapsed < 2 * deadline_s, f"took {elapsed:.1f} s against a {deadline_s} s deadline"
    return elapsed


# --------------------------------------------------------------------------- 1. deadlines


def test_trickling_server_fails_generate_within_deadline(fake: FakeSGLang,
                                                         tmp_path: Path) -> None:
    # One byte every 0.2 s: no single socket read ever waits long, the whole answer takes ~40 s.
    engine = _engine(fake.url, tmp_path)
    fake.script["/generate"] = [(Trickle(0.2), [_answer([5])])]
    elapsed = _raises_in_time(lambda: engine.generate([[1]], 1, SamplingParams()),
                              rf"{fake.url} .*generate.*{DEADLINE_S:g} s deadline")
    assert elapsed >= DEADLINE_S * 0.9  # the budget was used, not cut short
    engine.close()


def test_never_answering_server_fails_generate_within_deadline(fake: FakeSGLang,
                                                               tmp_path: Path) -> None:
    # Retries share the one budget: 3 attempts x a per-read timeout would be 3 x the deadline.
    engine = _engine(fake.url, tmp_path, max_retries=3)
    fake.script["/generate"] = [(HANG, None)]
    _raises_in_time(lambda: engine.generate([[1], [2], [3], [4]], 2, SamplingParams()),
                    rf"SGLang server {fake.url} failed POST /generate \(generate\)")
    engine.close()


def test_refused_connections_fail_within_deadline(tmp_path: Path) -> None:
    server = FakeSGLang()
    engine = _engine(server.url, tmp_path, max_retries=6, backoff_s=0.5)  # 31.5 s of backoffs
    url = server.url
    server.close()  # nothing listens there any more
    _raises_in_time(lambda: engine.generate([[1]], 1, SamplingParams()),
                    rf"{url} failed POST /generate \(generate\).*Is the server at {url} running")
    engine.close()


def test_refused_connections_with_few_retries_keep_their_message(tmp_path: Path) -> None:
    server = FakeSGLang()
    engine = _engine(server.url, tmp_path, max_retries=2, backoff_s=0.05)
    url = server.url
    server.close()
    _raises_in_time(lambda: engine.generate([[1]], 1, SamplingParams()),
                    rf"{url} failed POST /generate 3 times .*generate")
    engine.close()


def test_hung_health_check_fails_construction_within_deadline(fake: FakeSGLang,
                                                              tmp_path: Path) -> None:
    fake.script["/health"] = [(HANG, None)]
    _raises_in_time(lambda: _engine(fake.url, tmp_path),
                    rf"no healthy SGLang server at\n  {fake.url}: .*health")


def test_trickling_health_check_fails_construction_within_deadline(fake: FakeSGLang,
                                                                   tmp_path: Path) -> None:
    fake.script["/health"] = [(Trickle(0.3), None)]
    _raises_in_time(lambda: _engine(fake.url, tmp_path), rf"{fake.url}.*health")


def test_hung_weight_update_fails_sync_within_deadline(fake: FakeSGLang, tmp_path: Path) -> None:
    engine = _engine(fake.url, tmp_path)
    fake.script["/update_weights_from_disk"] = [(HANG, None)]
    tensors = [("w", torch.zeros(2))]
    _raises_in_time(lambda: engine.sync_weights(iter(tensors), 1),
                    rf"{fake.url} failed POST /update_weights_from_disk \(update_weights\)")
    assert engine.weight_version is None  # unknown after a failed sync
    engine.close()


def test_slow_but_complete_answer_within_deadline_is_accepted(fake: FakeSGLang,
                                                              tmp_path: Path) -> None:
    body = json.dumps(_answer([5])).encode()
    engine = _engine(fake.url, tmp_path, timeout_s=10.0)
    fake.script["/generate"] = [(Trickle(0.002), body)]  # ~0.5 s in all
    assert engine.generate([[1]], 1, SamplingParams()).token_ids == [[5]]
    engine.close()


def test_close_releases_requests_in_flight(fake: FakeSGLang, tmp_path: Path) -> None:
    import threading

    engine = _engine(fake.url, tmp_path, timeout_s=60.0)
    fake.script["/generate"] = [(HANG, None)]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.generate([[1]], 1, SamplingParams())
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.3)
    engine.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and errors and isinstance(errors[0], SGLangServerError)


def test_url_without_scheme_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match=r"'127.0.0.1:30000' must look like http://host:port"):
        SGLangRolloutEngine("127.0.0.1:30000")


def test_config_fields_are_validated_and_named() -> None:
    for kw, field in (({"sglang_timeout_s": 0.0}, "sglang_timeout_s"),
                      ({"sglang_timeout_s": -1.0}, "sglang_timeout_s"),
                      ({"sglang_max_retries": -1}, "sglang_max_retries"),
                      ({"sglang_max_concurrency": 0}, "sglang_max_concurrency")):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**kw)
    with pytest.raises(ValueError, match="sglang_max_retries must be an integer"):
        TrainConfig.from_dict({"sglang_max_retries": 1.5})
    cfg = TrainConfig.from_dict({"sglang_timeout_s": 30, "sglang_max_retries": 0,
                                 "sglang_max_concurrency": 4})
    assert (cfg.sglang_timeout_s, cfg.sglang_max_retries, cfg.sglang_max_concurrency) == \
        (30.0, 0, 4)


def test_trainer_builder_passes_timeout_retries_concurrency_and_vocab(
        fake: FakeSGLang, tiny_policy: Path, tmp_path: Path) -> None:
    from strace_ds.rollout.sglang.ranks import build_sglang_rollout

    cfg = TrainConfig(rollout="sglang", sglang_url=fake.url, output_dir=str(tmp_path),
                      sglang_timeout_s=DEADLINE_S, sglang_max_retries=1,
                      sglang_max_concurrency=3)
    engine = build_sglang_rollout(cfg.rollouts, cfg.run_dir / "sglang_weights", str(tiny_policy),
                                  is_main=True)
    try:
        assert engine.timeout_s == DEADLINE_S and engine.max_retries == 1
        assert engine.max_concurrency == 3 and engine.vocab_size == VOCAB
        fake.script["/generate"] = [(HANG, None)]
        _raises_in_time(lambda: engine.generate([[1]], 1, SamplingParams()),
                        rf"{fake.url} failed POST /generate \(generate\).*sglang_timeout_s")
    finally:
        engine.close()


# --------------------------------------------------------------------------- 2. validation


def _bad(mutate: Any) -> Any:
    """A fresh good answer with ``mutate`` applied to it (in place)."""
    answer = _answer([5, 6])
    mutate(answer)
    return answer


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(a: Any) -> None:
        target = a
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _delete(path: tuple[Any, ...]) -> Any:
    def mutate(a: Any) -> None:
        target = a
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


def _ids(ids: list[Any]) -> Any:
    """An answer whose output_ids and log-prob entries both carry ``ids``."""
    def mutate(a: Any) -> None:
        a["output_ids"] = list(ids)
        a["meta_info"]["output_token_logprobs"] = [[-0.5, t, None] for t in ids]
    return mutate


LP = ("meta_info", "output_token_logprobs")
BAD_REPLIES = {
    "out of vocabulary": (_bad(_ids([5, VOCAB])), r"output_ids\[1\].*452.*vocab"),
    "far out of vocabulary": (_bad(_ids([10**9])), r"output_ids\[0\].*vocab"),
    "negative token id": (_bad(_ids([-1, 5])), r"output_ids\[0\].*-1"),
    "float token id": (_bad(_ids([5.0, 6])), r"output_ids\[0\].*integer.*5\.0"),
    "bool token id": (_bad(_ids([True])), r"output_ids\[0\].*integer"),
    "string token id": (_bad(_ids(["5"])), r"output_ids\[0\].*integer"),
    "too long": (_bad(_ids(list(range(200)))), r"output_ids.*200 tokens.*max_new_tokens.*4"),
    "NaN log-prob": (_bad(_set((*LP, 0, 0), float("nan"))),
                     r"output_token_logprobs\[0\].*nan.*finite"),
    "infinite log-prob": (_bad(_set((*LP, 1, 0), float("-inf"))),
                          r"output_token_logprobs\[1\].*finite"),
    "positive log-prob": (_bad(_set((*LP, 0, 0), 50.0)), r"output_token_logprobs\[0\].*50.*<= 0"),
    "string log-prob": (_bad(_set((*LP, 0, 0), "-0.5")), r"output_token_logprobs\[0\].*number"),
    "null log-prob": (_bad(_set((*LP, 0, 0), None)), r"output_token_logprobs\[0\].*number"),
    "float id in log-probs": (_bad(_set((*LP, 0, 1), 5.0)),
                              r"output_token_logprobs\[0\].*integer"),
    "log-prob ids differ": (_bad(_set((*LP, 1, 1), 9)), r"output_token_logprobs.*output_ids"),
    "fewer log-probs": (_bad(lambda a: a["meta_info"]["output_token_logprobs"].pop()),
                        r"output_token_logprobs.*1 entries.*2 tokens"),
    "short log-prob entry": (_bad(_set((*LP, 0), [-0.5])), r"output_token_logprobs\[0\]"),
    "log-prob entry not a list": (_bad(_set((*LP, 0), -0.5)), r"output_token_logprobs\[0\]"),
    "log-probs not a list": (_bad(_set(LP, {"0": -0.5})), r"output_token_logprobs.*list"),
    "output_ids not a list": (_bad(_set(("output_ids",), 5)), r"output_ids.*list"),
    "output_ids missing": (_bad(_delete(("output_ids",))), r"output_ids"),
    "meta_info missing": (_bad(_delete(("meta_info",))), r"meta_info"),
    "meta_info not a dict": (_bad(_set(("meta_info",), [1, 2])), r"meta_info"),
    "log-probs missing": (_bad(_delete(LP)), r"output_token_logprobs.*return_logprob"),
    "weight_version missing": (_bad(_delete(("meta_info", "weight_version"))),
                               r"weight_version"),
    "weight_version not a scalar": (_bad(_set(("meta_info", "weight_version"), {"v": 0})),
                                    r"weight_version"),
    "finish_reason missing": (_bad(_delete(("meta_info", "finish_reason"))), r"finish_reason"),
    "finish_reason not a dict": (_bad(_set(("meta_info", "finish_reason"), "stop")),
                                 r"finish_reason"),
    "finish_reason unknown": (_bad(_set(("meta_info", "finish_reason", "type"), "weird")),
                              r"finish_reason.*weird"),
    "answer not a dict": (["not an answer"], r"answer 0.*dict"),
    "body a number": (17, r"answer 0.*dict"),
    "too many answers": ([_answer([5]), _answer([6])], r"2 answers, expected 1"),
    "no answers": ([], r"0 answers, expected 1"),
    "not JSON": (b"<html>502 Bad Gateway</html>", r"non-JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_malformed_generate_reply_is_rejected_naming_url_and_field(
        case: str, fake: FakeSGLang, tmp_path: Path) -> None:
    body, field = BAD_REPLIES[case]
    engine = _engine(fake.url, tmp_path)
    fake.script["/generate"] = [(200, body)]
    with pytest.raises(ValueError, match=rf"{fake.url}.*{field}") as exc:
        engine.generate([[1]], 1, SamplingParams(max_new_tokens=4))
    assert isinstance(exc.value, SGLangServerError)  # still the engine's error family
    # a bad reply is a server bug: it is not retried
    assert sum(p == "/generate" for _, p, _ in fake.requests) == 1
    engine.close()


def test_good_reply_passes_and_tiny_positive_logprob_noise_is_accepted(
        fake: FakeSGLang, tmp_path: Path) -> None:
    answer = _answer([0, VOCAB - 1, 7, 8])
    answer["meta_info"]["output_token_logprobs"][0][0] = 1e-6  # float noise on a sure token
    answer["meta_info"]["output_token_logprobs"][1][0] = 0
    engine = _engine(fake.url, tmp_path)
    fake.script["/generate"] = [(200, [answer])]
    gen = engine.generate([[1]], 1, SamplingParams(max_new_tokens=4))
    assert gen.token_ids == [[0, VOCAB - 1, 7, 8]]
    assert gen.logprobs[0][:2] == [0.0, 0.0] and all(lp <= 0 for lp in gen.logprobs[0])
    assert all(type(t) is int for t in gen.token_ids[0])
    assert all(type(lp) is float for lp in gen.logprobs[0])
    engine.close()


def test_bad_reply_in_a_group_of_several(fake: FakeSGLang, tmp_path: Path) -> None:
    engine = _engine(fake.url, tmp_path)
    fake.script["/generate"] = [(200, [_answer([5]), _answer([6, VOCAB + 3])])]
    with pytest.raises(ValueError, match=rf"{fake.url}/generate answer 1: output_ids\[1\]"):
        engine.generate([[1]], 2, SamplingParams(max_new_tokens=4))
    engine.close()


def test_vocab_size_from_the_served_model_config(fake: FakeSGLang, tiny_policy: Path,
                                                 tmp_path: Path) -> None:
    fake.model_path = str(tiny_policy)  # a local directory: its config.json has vocab_size
    engine = SGLangRolloutEngine(fake.url, tmp_path / "w", timeout_s=DEADLINE_S)
    assert engine.vocab_size == VOCAB
    fake.script["/generate"] = [(200, _answer([VOCAB]))]
    with pytest.raises(ValueError, match="vocab"):
        engine.generate([[1]], 1, SamplingParams(max_new_tokens=4))
    engine.close()
    fake.model_path = "/nonexistent"
    with pytest.warns(UserWarning, match="vocabulary size unknown"):
        engine = SGLangRolloutEngine(fake.url, tmp_path / "w", timeout_s=DEADLINE_S)
    assert engine.vocab_size is None
    engine.close()
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        SGLangRolloutEngine(fake.url, tmp_path / "w", vocab_size=0)


@pytest.mark.parametrize("path, body, field", [
    ("/model_info", [1, 2], r"/model_info.*dict"),
    ("/server_info", "up", r"/server_info.*dict"),
    ("/model_info", b"not json", r"/model_info.*non-JSON"),
])
def test_malformed_startup_replies_name_url(fake: FakeSGLang, tmp_path: Path, path: str,
                                            body: Any, field: str) -> None:
    fake.script[path] = [(200, body)]
    with pytest.raises(ValueError, match=rf"{fake.url}.*{field}"):
        _engine(fake.url, tmp_path)


def test_malformed_tensor_sync_reply_names_url(fake: FakeSGLang, tmp_path: Path) -> None:
    engine = _engine(fake.url, tmp_path, sync_mode="tensor")
    for path in ("/begin_weight_update", "/end_weight_update"):
        fake.script[path] = [(200, {"success": True})]
    fake.script["/update_weight_version"] = [(200, {"success": True})]
    fake.script["/update_weights_from_tensor"] = [(200, None)]  # empty body
    with pytest.raises(ValueError, match=rf"{fake.url}/update_weights_from_tensor.*dict"):
        engine.sync_weights(iter([("w", torch.zeros(2))]), 1)
    engine.close()
