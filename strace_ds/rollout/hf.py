"""The embedded rollout engine: transformers ``generate`` on the engine's own copy of the policy.

The engine never generates through the trainer's (possibly ZeRO-3 partitioned) module: it
keeps a plain copy, loaded from a checkpoint directory or deep-copied from a module, and the
trainer pushes new weights after every optimizer step with :meth:`HFRolloutEngine.sync_weights`
-- the same contract an SGLang server fulfils over HTTP.

Log-probs. For each answer token the engine returns ``log_softmax(logits / T)[token]``: the
log-prob under the *tempered, untruncated* distribution, whatever ``top_k`` / ``top_p`` are.
That is what the trainer recomputes (``token_stats`` works on ``logits / T``) and what SGLang's
``output_token_logprobs`` report, so importance ratios compare like with like. With top-k/top-p
on, the token was drawn from the renormalised truncated distribution, whose log-prob is this
value minus ``log(kept mass)``; callers that want that must compute it themselves. Greedy
decoding (``temperature == 0``) reports ``log_softmax(logits)`` (T = 1).

The values are recorded by a logits processor that runs before transformers' own warpers
(temperature, top-k, top-p), so it sees the raw model logits, and keeps only one ``[B, V]``
step in memory (``output_logits=True`` would hold ``[steps, B, V]``: 40 GB for 64 rows x 1024
tokens of a 151k vocabulary).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor

from strace_ds.rollout.base import Generation, SamplingParams, check_generate_request
from strace_ds.rollout.kv_cache import reserved_cache


class _LogprobRecorder(LogitsProcessor):
    """Records ``log_softmax(raw_logits / T)`` of each sampled token, one step behind.

    At decoding step t transformers calls the processor with ``input_ids`` ``[B, P + t]`` whose
    last column is the token chosen at step t-1, so the previous step's distribution can be
    gathered then; the final step is gathered by :meth:`finish` from the output sequences.
    """

    def __init__(self, temperature: float, prompt_len: int) -> None:
        self.temperature = temperature
        self.prompt_len = prompt_len
        self.pending: torch.Tensor | None = None  # [B, V] log-probs of the last step
        self.columns: list[torch.Tensor] = []  # each [B]

    def _gather(self, tokens: torch.Tensor) -> None:
        assert self.pending is not None
        self.columns.append(self.pending.gather(1, tokens[:, None].to(self.pending.device))[:, 0])
        self.pending = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_len:
            self._gather(input_ids[:, -1])
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores  # untouched: sampling itself is left to transformers

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """Gather the final step and return the answer log-probs ``[B, sequences_len - P]``."""
        if self.pending is not None and sequences.shape[1] > self.prompt_len:
            self._gather(sequences[:, -1])
        return torch.stack(self.columns, dim=1)


def _as_id_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _head(names: list[str], limit: int = 10) -> str:
    """``names`` for an error message, cut to ``limit`` entries."""
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


class HFRolloutEngine:
    """In-process rollouts with transformers ``generate``; implements ``RolloutEngine``.

    Args:
        model: a checkpoint directory (or hub id) for ``AutoModelForCausalLM``, or a module that
            is deep-copied (pass a plain, gathered module, not a ZeRO-3 partitioned one).
        tokenizer: a tokenizer or its path, used only for the EOS/pad ids; loaded from ``model``
            when that is a directory and both ids are not given.
        device: where the engine's copy lives and generates.
        dtype: dtype of the engine's copy (log-probs are always computed in float32).
        max_batch_size: rows (prompts x n) per ``generate`` call.
        eos_token_id: id or ids that end an answer; default: the tokenizer's and the model's
            (config and generation config) EOS ids together.
        pad_token_id: left-padding id; default the tokenizer's, then the first EOS id.
        weight_version: version stamped on answers until the first ``sync_weights``.
    """

    def __init__(
        self,
        model: str | Path | torch.nn.Module,
        tokenizer: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch_size: int = 64,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        weight_version: int = 0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        if isinstance(model, torch.nn.Module):
            self.model = copy.deepcopy(model)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype)
        self.model.to(device=self.device, dtype=dtype).eval()
        self.model.requires_grad_(False)
        if isinstance(tokenizer, (str, Path)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        if (
            tokenizer is None
            and not isinstance(model, torch.nn.Module)
            and (eos_token_id is None or pad_token_id is None)
        ):
            tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.eos_token_ids = self._resolve_eos(eos_token_id, tokenizer)
        self.pad_token_id = self._resolve_pad(pad_token_id, tokenizer)
        # A neutral generation config: the checkpoint's own (Qwen3 ships top_k=20, top_p=0.95,
        # temperature=0.6) must not leak into sampling, which only SamplingParams controls.
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id
        )
        self.weight_version: int | None = weight_version

    def _resolve_eos(self, eos_token_id: int | list[int] | None, tokenizer: Any) -> list[int]:
        """``eos_token_id`` if given, else the union of the tokenizer's, the checkpoint's
        generation config's and the model config's EOS ids (Qwen3 instruct checkpoints list
        both ``<|im_end|>`` and ``<|endoftext|>``; SGLang also stops on all of them)."""
        if eos_token_id is not None:
            ids = _as_id_list(eos_token_id)
        else:
            found = [
                getattr(tokenizer, "eos_token_id", None),
                getattr(self.model.generation_config, "eos_token_id", None),
                getattr(self.model.config, "eos_token_id", None),
            ]
            ids = list(dict.fromkeys(i for value in found for i in _as_id_list(value)))
        if not ids:
            raise ValueError(
                "HFRolloutEngine: no EOS token id found; pass eos_token_id=... or a tokenizer "
                "with eos_token set"
            )
        return ids

    def _resolve_pad(self, pad_token_id: int | None, tokenizer: Any) -> int:
        for candidate in (pad_token_id, getattr(tokenizer, "pad_token_id", None)):
            if candidate is not None:
                return int(candidate)
        return self.eos_token_ids[0]

    # ------------------------------------------------------------------ generation

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> Generation:
        """Sample ``n`` answers per prompt; rows ``i*n .. i*n+n-1`` answer prompt ``i``.

        With ``sampling.seed`` set the call is reproducible and the caller's global torch RNG
        state is restored afterwards; with ``seed=None`` sampling draws from (and advances) the
        global RNG, as transformers does.
        """
        if self.model is None:
            raise RuntimeError("HFRolloutEngine.generate: the engine is closed; build a new one")
        check_generate_request(prompt_ids, n, sampling)
        rows = [list(map(int, p)) for p in prompt_ids for _ in range(n)]
        index = [i for i in range(len(prompt_ids)) for _ in range(n)]
        stop_ids = sorted(set(self.eos_token_ids) | {int(t) for t in sampling.stop_token_ids})
        chunks = range(0, len(rows), self.max_batch_size)
        bar = tqdm(chunks, desc="rollout/hf", unit="batch", disable=len(chunks) < 2, leave=False)
        out_tokens: list[list[int]] = []
        out_logprobs: list[list[float]] = []
        out_reasons: list[str] = []
        with torch.random.fork_rng(devices=self._rng_devices(), enabled=sampling.seed is not None):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            for start in bar:
                batch = rows[start : start + self.max_batch_size]
                tokens, logprobs, reasons = self._generate_batch(batch, sampling, stop_ids)
                out_tokens += tokens
                out_logprobs += logprobs
                out_reasons += reasons
        return Generation(
            prompt_index=index,
            token_ids=out_tokens,
            logprobs=out_logprobs,
            finish_reasons=out_reasons,
            weight_version=self.weight_version,
        )

    def _rng_devices(self) -> list[torch.device]:
        return [self.device] if self.device.type == "cuda" else []

    @torch.inference_mode()
    def _generate_batch(
        self, batch: list[list[int]], sampling: SamplingParams, stop_ids: list[int]
    ) -> tuple[list[list[int]], list[list[float]], list[str]]:
        """One ``generate`` call on a left-padded batch: trimmed tokens, log-probs, reasons."""
        width = max(len(p) for p in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, p in enumerate(batch):  # left padding: the answer starts in the same column
            input_ids[r, width - len(p) :] = torch.tensor(p)
            attention_mask[r, width - len(p) :] = 1
        greedy = sampling.temperature == 0
        recorder = _LogprobRecorder(1.0 if greedy else sampling.temperature, width)
        # Sampling flags only when sampling: transformers warns about them under greedy.
        warpers = (
            {}
            if greedy
            else {
                "temperature": sampling.temperature,
                "top_k": 0 if sampling.top_k == -1 else sampling.top_k,  # 0 = off (None = 50)
                "top_p": sampling.top_p,
            }
        )
        # Keys and values written in place, not re-concatenated every step: bit-identical.
        cache = reserved_cache(self.model, width + sampling.max_new_tokens)
        sequences = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            logits_processor=[recorder],
            do_sample=not greedy,
            **warpers,
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=0,
            eos_token_id=stop_ids,
            pad_token_id=self.pad_token_id,
            use_cache=True,
            **({} if cache is None else {"cache": cache}),
            # Each rank generates on its own copy: with ZeRO-3 configured transformers would
            # otherwise turn on synced_gpus and wait for the other ranks inside generate.
            synced_gpus=False,
        )
        logprobs = recorder.finish(sequences).cpu()  # [B, A]
        answers = sequences[:, width:].cpu()  # [B, A]
        stop_set = set(stop_ids)
        tokens_out, logprobs_out, reasons = [], [], []
        for r in range(len(batch)):
            row = answers[r].tolist()
            # Transformers pads a row with pad_token_id once it has stopped; the first stop
            # token ends the answer (pad may equal EOS, so never search for pad).
            end = next((j + 1 for j, t in enumerate(row) if t in stop_set), None)
            reasons.append("length" if end is None else "stop")
            end = len(row) if end is None else end
            tokens_out.append(row[:end])
            logprobs_out.append(logprobs[r, :end].tolist())
        return tokens_out, logprobs_out, reasons

    # ------------------------------------------------------------------ weights

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Copy full tensors into the engine's model by HF parameter name; stamp ``version``.

        Every parameter must be covered: a tied pair (``lm_head.weight`` and
        ``model.embed_tokens.weight``) is one tensor, covered by either name. Persistent buffers
        may be sent and are copied, but are not required. All unknown names, shape mismatches
        and missing parameters are reported together in one ``ValueError``; on error the
        weights may be partially updated and ``weight_version`` is left unchanged.
        """
        if self.model is None:
            raise RuntimeError("HFRolloutEngine.sync_weights: the engine is closed")
        params = dict(self.model.named_parameters(remove_duplicate=False))
        targets: dict[str, torch.Tensor] = {**dict(self.model.named_buffers()), **params}
        covered: set[int] = set()
        unknown: list[str] = []
        mismatched: list[str] = []
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = targets.get(name)
                if target is None:
                    unknown.append(name)
                elif tuple(target.shape) != tuple(tensor.shape):
                    mismatched.append(
                        f"{name}: got {tuple(tensor.shape)}, expected {tuple(target.shape)}"
                    )
                else:
                    target.copy_(tensor.detach().to(device=target.device, dtype=target.dtype))
                    covered.add(id(target))
        # named_parameters() without remove_duplicate yields each tied tensor once, by its
        # first name: the name to report when neither alias was sent.
        missing = [n for n, p in self.model.named_parameters() if id(p) not in covered]
        problems = [
            f"{what} {_head(names)}"
            for what, names in (
                ("unknown names", unknown),
                ("shape mismatches", mismatched),
                ("missing parameters", missing),
            )
            if names
        ]
        if problems:
            raise ValueError(
                "sync_weights: " + "; ".join(problems) + ". Send every parameter under its "
                "HF name (model.named_parameters(), no 'module.' prefix) with its full shape."
            )
        self.weight_version = version

    def close(self) -> None:
        """Drop the model copy (frees its memory); the engine cannot generate afterwards."""
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
