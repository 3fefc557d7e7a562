"""Rollouts from one or more SGLang servers over HTTP; weight sync by checkpoint or tensor handle.

The trainer never imports SGLang (it lives in its own virtualenv, see
``scripts/setup_sglang_env.sh``); :class:`SGLangRolloutEngine` only speaks SGLang 0.5.23's HTTP
API (``/generate``, ``/update_weights_from_disk``, ``/update_weights_from_tensor``, ...).

Generation. One ``/generate`` request per prompt (``input_ids`` + ``sampling_params`` with
``n``), sent concurrently from a thread pool and spread round-robin over the servers (prompt i
goes to ``urls[i % len(urls)]``); SGLang's scheduler batches concurrent requests itself. For a
batch with ``n > 1`` SGLang 0.5.23 answers prompt-major (``TokenizerManager._handle_batch_request``
loops ``for i in prompts: for _ in range(n)``), and per-prompt requests make the group layout
(rows ``i*n .. i*n+n-1`` answer prompt i) independent of that anyway. With ``seed`` set, SGLang
seeds each sample by ``(sampling_seed, position)``, so the ``n`` samples of one request would be
identical: the engine then sends the prompt ``n`` times with ``n=1`` and a distinct seed per row,
derived from ``(seed, row)`` so results do not depend on how rows are spread over servers.
SGLang 0.5.23 honours ``sampling_seed`` only on servers started with
``--enable-deterministic-inference``, which needs a CUDA attention backend (fa3, flashinfer,
triton): elsewhere seeded calls are not reproducible and the engine warns once.

Log-probs. SGLang's ``output_token_logprobs`` are ``log softmax(logits / T)`` of each sampled
token (the tempered, *untruncated* distribution; ``log_softmax(logits)`` when greedy): the same
convention as :class:`~strace_ds.rollout.hf.HFRolloutEngine`, what the trainer recomputes. The
engine returns them as they are; measuring the rollout/trainer mismatch (and any correction) is
the trainer's job.

Weight versions. Every answer carries SGLang's ``meta_info.weight_version``; the engine checks it
against the version of its last :meth:`~SGLangRolloutEngine.sync_weights` and raises
:class:`StaleWeightsError` on any difference: stale answers are never used silently. A read-only
client (``scripts/evaluate.py``) passes ``weight_version=None`` and no ``weights_dir``: it adopts
the servers' live version and never syncs.

Weight sync (``sync_mode``):

* ``"disk"`` (default, any deployment with a filesystem the servers can read): the tensors are
  streamed into a Hugging Face checkpoint ``weights_dir/v<version>`` (``config.json`` and
  tokenizer files copied from the base model directory, then ``model.safetensors`` or shards of
  at most ``shard_bytes`` plus ``model.safetensors.index.json``), written in a temporary
  directory and renamed into place (atomic), then every server gets ``POST
  /update_weights_from_disk``. Old versions beyond ``keep_versions`` are deleted. With several
  servers on several nodes, ``weights_dir`` must be on a filesystem they all see.
* ``"tensor"`` (colocated: servers on the trainer's own host): buckets of tensors go as
  ``torch.multiprocessing`` handles (CUDA IPC on GPUs, shared-memory files on CPU) in ``POST
  /update_weights_from_tensor`` between ``/begin_weight_update`` and ``/end_weight_update``.
  The engine sets ``torch.multiprocessing.set_sharing_strategy("file_system")`` for the whole
  process (the default ``file_descriptor`` strategy makes SGLang's unpickler fail with
  ``AuthenticationError: digest sent was rejected``).
* NCCL broadcast (``/init_weights_update_group`` + ``/update_weights_from_distributed``, the
  fastest path for separate GPU servers) is **not provided yet**.

Errors. Every HTTP call has ONE wall-clock deadline, ``timeout_s`` (the trainer's
``--sglang_timeout_s``), retries and backoffs included: a watchdog shuts the socket down when it
passes, so a server that trickles bytes, never answers or refuses connections fails the call
within the deadline with :class:`SGLangServerError` naming the URL and the operation
(``generate``, ``update_weights``, ``health``). Within it, connection failures and HTTP
429/502/503/504 are retried up to ``max_retries`` times with exponential backoff
(``backoff_s * 2**attempt``; a retry that could not finish in time is not made). Other HTTP
errors fail at once with the server's message. :meth:`~SGLangRolloutEngine.generate` fails on
the first failed request. There is no fail-over between servers.

Replies are validated, never trusted (:func:`parse_generate_response`): token ids are integers
in ``[0, vocab_size)``, answers at most ``max_new_tokens`` long, log-probs finite and <= 0, the
number of answers and every ``meta_info`` field as requested; anything else is
:class:`SGLangReplyError` (a ``ValueError``) naming the URL and the field, and is not retried.
"""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from strace_ds.model.vocab import vocab_size as model_vocab_size
from strace_ds.rollout.base import (
    SGLANG_SYNC_MODES,
    Generation,
    SamplingParams,
    check_generate_request,
)
from strace_ds.rollout.sglang.client import (
    HEALTH_TIMEOUT_S,
    SGLangError,
    SGLangServerError,
    StaleWeightsError,
    _Http,
)
from strace_ds.rollout.sglang.replies import (
    _Answer,
    _expect_dict,
    parse_generate_response,
)
from strace_ds.rollout.sglang.weights import (
    publish_atomically,
    serialize_named_tensors,
    tensor_buckets,
    write_hf_checkpoint,
)
from strace_ds.seeding import hash_seed


def _model_key(model: str | Path) -> str:
    """What :meth:`SGLangRolloutEngine.check_model` compares: a resolved local path, or a hub
    id (also for a hub cache snapshot directory)."""
    text = str(model).rstrip("/")
    if not text:
        return ""  # a server that reports no model_path matches nothing
    parts = Path(text).parts
    for k, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[k + 1] == "snapshots":
            return part[len("models--") :].replace("--", "/")
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def row_seed(seed: int, row: int) -> int:
    """Per-row ``sampling_seed`` for SGLang: a stable hash of ``(seed, row)`` in [0, 2**31)."""
    return hash_seed(f"strace_ds:{seed}:{row}") & 0x7FFFFFFF


# --------------------------------------------------------------------------- engine


class SGLangRolloutEngine:
    """``RolloutEngine`` over SGLang servers' HTTP API (see the module docstring).

    Args:
        urls: one server URL, a comma-separated list, or a list (``http://host:port``).
        weights_dir: where ``sync_mode="disk"`` writes ``v<version>`` checkpoints; must be
            readable by every server under the same path. None (default) for a client that
            never syncs by disk (evaluation, ``sync_mode="tensor"``): such a sync then raises.
        timeout_s: overall wall-clock deadline of one HTTP call (generation of a whole group, or
            one weight load), retries and backoffs included; past it the call raises
            :class:`SGLangServerError` naming the URL and the operation.
        max_retries: retries of a failed request (connection error, 429/502/503/504) within
            that deadline.
        backoff_s: first retry delay; it doubles each retry.
        sync_mode: ``"disk"`` or ``"tensor"`` (colocated servers only).
        keep_versions: checkpoint versions kept in ``weights_dir`` (the newest ones).
        base_model_dir: directory whose ``config.json``/tokenizer files go into each checkpoint;
            default the first server's launch ``model_path`` (``/server_info``) when it exists
            on this machine.
        weight_version: the version of the weights the servers hold now. A fresh server
            reporting SGLang's ``"default"`` is re-labelled with it (``/update_weight_version``).
            None: adopt the servers' live version (``/model_info``; they must all agree, and
            ``"default"`` is re-labelled 0), for a read-only client such as evaluation.
        max_concurrency: concurrent requests per server.
        shard_bytes: largest safetensors shard (and tensor bucket) held in memory during sync.
        save_dtype: cast tensors to this dtype before writing/sending (None: as given).
        vocab_size: the policy's vocabulary size (its config's ``vocab_size``): answers' token
            ids must lie in ``[0, vocab_size)``. None: read from ``base_model_dir``'s (or the
            served model's, when local or in the hub cache) ``config.json``; when that fails
            too, a warning, and ids are only checked to be non-negative integers.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        weights_dir: str | Path | None = None,
        timeout_s: float = 600.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        sync_mode: str = "disk",
        keep_versions: int = 2,
        base_model_dir: str | Path | None = None,
        weight_version: int | None = 0,
        max_concurrency: int = 32,
        shard_bytes: int = 1 << 30,
        save_dtype: torch.dtype | None = None,
        vocab_size: int | None = None,
    ) -> None:
        self.urls = [
            u.strip().rstrip("/")
            for u in (urls.split(",") if isinstance(urls, str) else urls)
            if u.strip()
        ]
        if not self.urls:
            raise ValueError("SGLangRolloutEngine: urls must name at least one server")
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"SGLangRolloutEngine: server URL {url!r} must look like http://host:port"
                )
        if sync_mode not in SGLANG_SYNC_MODES:
            raise ValueError(f"SGLangRolloutEngine: sync_mode must be one of "
                             f"{', '.join(SGLANG_SYNC_MODES)}, got {sync_mode!r}")  # fmt: skip
        for name, value, low in (
            ("timeout_s", timeout_s, 1e-3),
            ("max_retries", max_retries, 0),
            ("backoff_s", backoff_s, 0),
            ("keep_versions", keep_versions, 1),
            ("max_concurrency", max_concurrency, 1),
            ("shard_bytes", shard_bytes, 1),
            ("vocab_size", 1 if vocab_size is None else vocab_size, 1),
        ):
            if value < low:
                raise ValueError(f"SGLangRolloutEngine: {name} must be >= {low}, got {value}")
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        self.sync_mode = sync_mode
        self.keep_versions = keep_versions
        self.shard_bytes = shard_bytes
        self.save_dtype = save_dtype
        self.weight_version: int | str | None = weight_version
        self.last_sync_s: float | None = None
        """Wall time of the last :meth:`sync_weights` (write + load), seconds."""
        self.last_sync_breakdown: dict[str, float] = {}
        """``{"write_s", "load_s"}`` of the last disk sync, ``{"send_s"}`` of a tensor sync."""
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self._http = _Http(timeout_s, max_retries, backoff_s)
        self._pool = cf.ThreadPoolExecutor(
            max_concurrency * len(self.urls), thread_name_prefix="sglang-rollout"
        )
        self._owned: list[Any] = []  # SGLangServer objects to stop on close()
        self.model_infos: list[dict[str, Any]] = []
        """Each server's ``/model_info`` at construction (live ``model_path``, version, ...)."""
        infos = self._check_servers()
        self.tp_sizes = [int(i.get("tp_size", 1) or 1) for i in infos]
        self.deterministic = all(bool(i.get("enable_deterministic_inference")) for i in infos)
        self._warned_seed = False
        model_path = infos[0].get("model_path")
        if base_model_dir is None and model_path and Path(model_path).is_dir():
            base_model_dir = model_path
        self.base_model_dir = Path(base_model_dir) if base_model_dir is not None else None
        if vocab_size is None:
            vocab_size = model_vocab_size(self.base_model_dir) or model_vocab_size(
                self.model_infos[0].get("model_path")
            )
        if vocab_size is None:
            warnings.warn(
                "SGLangRolloutEngine: vocabulary size unknown (pass vocab_size=..., or a "
                "base_model_dir / served model whose config.json is readable here): answers' "
                "token ids are only checked to be non-negative integers.",
                stacklevel=2,
            )
        self.vocab_size: int | None = vocab_size
        """Answers' token ids must be below it (None: unknown, not checked)."""
        if sync_mode == "tensor":
            torch.multiprocessing.set_sharing_strategy("file_system")

    # ------------------------------------------------------------------ set-up

    def _check_servers(self) -> list[dict[str, Any]]:
        """``/health``, ``/server_info`` and ``/model_info`` of every server; label fresh servers'
        ``"default"`` weight version with the engine's."""
        down = []
        for url in self.urls:
            try:
                self._http.call(
                    "GET",
                    url,
                    "/health",
                    timeout_s=min(HEALTH_TIMEOUT_S, self._http.timeout_s),
                    retries=1,
                )
            except SGLangServerError as e:
                down.append(f"  {url}: {e}")
        if down:
            raise SGLangServerError(
                "SGLangRolloutEngine: no healthy SGLang server at\n"
                + "\n".join(down)
                + "\nStart one with `python scripts/launch_sglang.py"
                " --python .venv-sglang/bin/python --model-path DIR`"
                " (or the trainer's --sglang-launch PYTHON) and pass its URL."
            )
        infos = []
        # /server_info holds the launch arguments (model_path, tp_size, ...); the live weight
        # version and model path are only in /model_info (/server_info keeps launch values).
        self.model_infos = [
            _expect_dict(self._http.call("GET", url, "/model_info"), url, "/model_info")
            for url in self.urls
        ]
        if self.weight_version is None:
            self.weight_version = self._adopt_live_version()
        for url, model_info in zip(self.urls, self.model_infos):
            info = _expect_dict(self._http.call("GET", url, "/server_info"), url, "/server_info")
            if str(model_info.get("weight_version")) == "default":
                self._http.call(
                    "POST",
                    url,
                    "/update_weight_version",
                    {"new_version": str(self.weight_version), "abort_all_requests": False},
                )
                model_info["weight_version"] = str(self.weight_version)
            infos.append(info)
        return infos

    def _adopt_live_version(self) -> int | str:
        """The version every server reports (``"default"`` counts as 0); an int when it is one."""
        live = {url: str(i.get("weight_version")) for url, i in zip(self.urls, self.model_infos)}
        versions = {"0" if v == "default" else v for v in live.values()}
        if len(versions) != 1:
            raise SGLangError(
                "SGLangRolloutEngine: the servers hold different weight versions ("
                + ", ".join(f"{u}: {v!r}" for u, v in live.items())
                + "); answers from them would mix policies. Point every URL at the same weights."
            )
        version = versions.pop()
        return int(version) if version.lstrip("-").isdigit() else version

    def check_model(self, model: str | Path) -> None:
        """Raise :class:`SGLangError` unless every server serves ``model`` (its ``/model_info``
        ``model_path``: the same local directory, or the same hub id; a hub cache snapshot
        ``.../models--org--name/snapshots/<rev>`` counts as ``org/name``)."""
        want = _model_key(model)
        wrong = {
            url: i.get("model_path")
            for url, i in zip(self.urls, self.model_infos)
            if _model_key(i.get("model_path") or "") != want
        }
        if wrong:
            raise SGLangError(
                f"the SGLang server(s) do not serve --model {str(model)!r}: "
                + ", ".join(f"{u} serves {p!r}" for u, p in wrong.items())
                + ". Start the server with --model-path set to the model you evaluate, or pass "
                "the served path as --model (its tokenizer encodes the prompts)."
            )

    @classmethod
    def launch(
        cls,
        python: str | Path,
        model_path: str | Path,
        weights_dir: str | Path | None = None,
        device: str = "cpu",
        extra_args: Sequence[str] = (),
        num_servers: int = 1,
        **kwargs: Any,
    ) -> SGLangRolloutEngine:
        """Start ``num_servers`` local servers (:class:`~strace_ds.rollout.sglang.server.
        SGLangServer`) from ``python``'s environment and an engine that stops them on close()."""
        from strace_ds.rollout.sglang.server import SGLangServer

        servers: list[SGLangServer] = []
        try:
            for _ in range(num_servers):
                servers.append(
                    SGLangServer(
                        python,
                        model_path,
                        device=device,
                        extra_args=extra_args,
                        weight_version=kwargs.get("weight_version", 0),
                    )
                )
                servers[-1].start()
            for s in servers:
                s.wait_healthy()
            engine = cls(
                [s.url for s in servers],
                weights_dir,
                base_model_dir=kwargs.pop("base_model_dir", model_path),
                **kwargs,
            )
        except BaseException:
            for s in servers:
                s.stop()
            raise
        engine._owned = servers
        return engine

    # ------------------------------------------------------------------ generation

    @staticmethod
    def _payload(
        prompt: list[int], first_row: int, n: int, sampling: SamplingParams
    ) -> dict[str, Any]:
        """The ``/generate`` body for one prompt's group of ``n`` answers."""
        params: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "stop_token_ids": [int(t) for t in sampling.stop_token_ids],
        }
        body: dict[str, Any] = {"return_logprob": True}
        if sampling.seed is None:
            body.update(input_ids=[prompt], sampling_params={**params, "n": n})
        else:  # distinct seeds per row: one request-batch of n copies, n=1 each
            body.update(
                input_ids=[prompt] * n,
                sampling_params=[
                    {**params, "n": 1, "sampling_seed": row_seed(sampling.seed, first_row + j)}
                    for j in range(n)
                ],
            )
        return body

    def _generate_group(
        self, url: str, body: dict[str, Any], n: int, max_new_tokens: int
    ) -> list[_Answer]:
        answers = parse_generate_response(
            self._http.call("POST", url, "/generate", body), n, url, self.vocab_size, max_new_tokens
        )
        expected = str(self.weight_version)
        for a in answers:
            if a.weight_version != expected:
                raise StaleWeightsError(
                    f"SGLang server {url} answered with weight_version {a.weight_version!r}, "
                    f"expected {expected!r}: its weights are stale (a sync_weights that did not "
                    "reach it, or another client updating it). Answers discarded."
                )
        return answers

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> Generation:
        """Sample ``n`` answers per prompt; rows ``i*n .. i*n+n-1`` answer prompt ``i``."""
        check_generate_request(prompt_ids, n, sampling)
        if sampling.seed is not None and not self.deterministic and not self._warned_seed:
            self._warned_seed = True
            warnings.warn(
                "SGLang ignores sampling_seed unless every server runs with "
                "--enable-deterministic-inference (CUDA attention backends only in 0.5.23; not "
                "available on CPU): these rollouts are NOT reproducible from the seed.",
                stacklevel=2,
            )
        futures = []
        for i, prompt in enumerate(prompt_ids):
            body = self._payload([int(t) for t in prompt], i * n, n, sampling)
            url = self.urls[i % len(self.urls)]
            futures.append(
                self._pool.submit(self._generate_group, url, body, n, sampling.max_new_tokens)
            )
        try:
            # The first failure (deadline, bad reply, ...) ends the call at once, whichever
            # prompt it was; queued requests are cancelled, running ones end by their deadline.
            done, _ = cf.wait(futures, return_when=cf.FIRST_EXCEPTION)
            for f in futures:
                if f in done and f.exception() is not None:
                    raise f.exception()
            groups = [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()
        answers = [a for g in groups for a in g]
        return Generation(
            prompt_index=[i for i in range(len(prompt_ids)) for _ in range(n)],
            token_ids=[a.token_ids for a in answers],
            logprobs=[a.logprobs for a in answers],
            finish_reasons=[a.finish_reason for a in answers],
            weight_version=self.weight_version,
        )

    # ------------------------------------------------------------------ weights

    def _on_all(self, path: str, payload: dict[str, Any]) -> None:
        """POST ``payload`` to every server concurrently; raise naming each failing URL."""
        results = {
            u: self._pool.submit(self._http.call, "POST", u, path, payload) for u in self.urls
        }
        errors = []
        for url, fut in results.items():
            try:
                body = fut.result()
            except SGLangServerError as e:
                errors.append(str(e))
                continue
            if isinstance(body, dict) and body.get("success") is False:
                errors.append(f"{url}{path}: success=false: {body.get('message')}")
        if errors:
            raise SGLangServerError(f"{path} failed: " + "; ".join(errors))

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new policy weights (HF names, full tensors, consumed streaming) on every server.

        On success ``weight_version`` becomes ``version`` and :attr:`last_sync_s` holds the time
        taken. On failure ``weight_version`` becomes None (unknown): every answer is then
        rejected as stale until a sync succeeds, whichever servers did load the new weights.
        """
        if self.sync_mode == "disk" and self.weights_dir is None:
            raise ValueError(
                "SGLangRolloutEngine.sync_weights: sync_mode='disk' needs weights_dir (where the "
                "v<version> checkpoints are written, readable by every server); this engine was "
                "built without one (a read-only client). Pass weights_dir=... to the engine."
            )
        start = time.perf_counter()
        self.weight_version = None  # mid-sync: no answer can match
        if self.sync_mode == "disk":
            self._sync_disk(named_tensors, version)
        else:
            self._sync_tensor(named_tensors, version)
        self.weight_version = version
        self.last_sync_s = time.perf_counter() - start

    def _sync_disk(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        assert self.weights_dir is not None  # checked by sync_weights
        t0 = time.perf_counter()
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        final = self.weights_dir / f"v{version}"
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.tmp-", dir=self.weights_dir))
        try:
            write_hf_checkpoint(
                named_tensors, tmp, self.base_model_dir, self.shard_bytes, self.save_dtype
            )
            publish_atomically(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        t1 = time.perf_counter()
        self._on_all(
            "/update_weights_from_disk",
            {
                "model_path": str(final.resolve()),
                "weight_version": str(version),
                "flush_cache": True,
                "abort_all_requests": False,
            },
        )
        self.last_sync_breakdown = {"write_s": t1 - t0, "load_s": time.perf_counter() - t1}
        self._prune_versions(keep=final)

    def _prune_versions(self, keep: Path) -> None:
        """Delete ``v<k>`` directories beyond the newest ``keep_versions`` (never ``keep``)."""
        versions = sorted(
            (int(p.name[1:]), p)
            for p in self.weights_dir.iterdir()
            if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit()
        )
        for _, path in versions[: max(0, len(versions) - self.keep_versions)]:
            if path.resolve() != keep.resolve():
                shutil.rmtree(path, ignore_errors=True)

    def _sync_tensor(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        t0 = time.perf_counter()
        self._on_all("/begin_weight_update", {})
        try:
            for bucket in tensor_buckets(named_tensors, self.shard_bytes):
                if self.save_dtype is not None:
                    bucket = [(n, t.to(self.save_dtype)) for n, t in bucket]
                for url, tp in zip(self.urls, self.tp_sizes):
                    # One payload per TP rank, each pickled separately (SGLang deserialises
                    # only its own rank's copy). ``bucket`` stays referenced until loaded.
                    payload = {
                        "serialized_named_tensors": [
                            serialize_named_tensors(bucket) for _ in range(tp)
                        ],
                        "flush_cache": True,
                        "abort_all_requests": False,
                    }
                    body = _expect_dict(
                        self._http.call("POST", url, "/update_weights_from_tensor", payload),
                        url,
                        "/update_weights_from_tensor",
                        empty_ok=False,
                    )
                    if not body.get("success", False):
                        raise SGLangServerError(
                            f"{url}/update_weights_from_tensor: {body.get('message')}"
                        )
        finally:
            self._on_all("/end_weight_update", {})
        self._on_all(
            "/update_weight_version", {"new_version": str(version), "abort_all_requests": False}
        )
        self.last_sync_breakdown = {"send_s": time.perf_counter() - t0}

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop the thread pool and any servers this engine launched; idempotent."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        for server in self._owned:
            server.stop()
        self._owned = []
