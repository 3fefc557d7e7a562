"""Prompt templates: question + instruction as one user turn, rendered by the model's chat template.

The instruction asks for a ``\\boxed{}`` answer because that is what
:func:`strace_ds.rewards.grade_answer` reads. The synthetic task
(:mod:`strace_ds.data.arithmetic`) has its own shorter instruction, already part of its stored
prompts; pass ``instruction=""`` for those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""The standard math instruction (DeepSeek-R1 / Qwen2.5-Math evaluation wording)."""

SHORT_INSTRUCTION = "Put your final answer within \\boxed{}."
"""For small models and short budgets: no request to show reasoning."""


def user_message(question: str, instruction: str | None = None) -> str:
    """``question + "\\n" + instruction``; ``instruction=None`` means :data:`INSTRUCTION`, ``""``
    means the question alone."""
    if instruction is None:
        instruction = INSTRUCTION
    return f"{question}\n{instruction}" if instruction else question


def _as_id_list(encoded: Any) -> list[int]:
    """Token ids from whatever ``apply_chat_template(tokenize=True)`` returned.

    transformers < 5 returns ``list[int]`` by default; 5.x returns a ``BatchEncoding`` (a dict
    with ``input_ids``); with ``return_tensors`` it is a ``[1, T]`` tensor. A batch of one
    (``[[...]]``) is unwrapped.
    """
    if isinstance(encoded, Mapping):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        if len(encoded) != 1:
            raise ValueError(f"build_prompt_ids: expected one sequence, got {len(encoded)}")
        encoded = encoded[0]
    return [int(t) for t in encoded]


def build_prompt_ids(tokenizer: Any, question: str, instruction: str | None = None) -> list[int]:
    """Token ids of the chat prompt for one question, ending with the assistant turn's header.

    The user content is ``question + "\\n" + instruction`` (see :func:`user_message`) and the
    tokenizer's chat template adds the generation prompt (e.g. ``<|im_start|>assistant\\n``).

    Args:
        tokenizer: a Hugging Face tokenizer with a ``chat_template``.
        question: the problem text.
        instruction: appended after a newline; None uses :data:`INSTRUCTION`, ``""`` nothing.

    Returns:
        ``[T]`` prompt token ids as a plain list of ints.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("build_prompt_ids: question must be a non-empty string")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"build_prompt_ids: tokenizer {type(tokenizer).__name__} has no chat template; use "
            "an instruct/chat model's tokenizer or set one, e.g. tokenizer.chat_template = "
            "'{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}'"
        )
    messages = [{"role": "user", "content": user_message(question, instruction)}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return _as_id_list(encoded)


def fit_to_context(
    data: Any, prompt_ids: list[list[int]], context: int | None, max_new_tokens: int,
    drop: bool = False,
) -> tuple[Any, list[list[int]], int]:  # fmt: skip
    """The prompts that leave room for ``max_new_tokens`` in the model's ``context``.

    A longer prompt cannot be answered: the model has no positions left (the tiny policy has
    512), or a huge one allocates its attention and logits at step 1 and kills the run. With
    ``drop`` such prompts are skipped (returned count); otherwise the first is named with its
    row and length in a ``ValueError`` that says how to fix it. ``context=None`` (a model
    without a position limit) checks nothing. Returns ``(data, prompt_ids, dropped)``.
    """
    if context is None:
        return data, prompt_ids, 0
    limit = context - max_new_tokens
    long = [i for i, ids in enumerate(prompt_ids) if len(ids) > limit]
    if not long:
        return data, prompt_ids, 0
    if not drop:
        first = data.examples[long[0]]
        row = first.meta.get("row", long[0])
        raise ValueError(
            f"data: {len(long)} of {len(prompt_ids)} prompts of {data.source} are longer than "
            f"the model's context ({context} positions) minus max_new_tokens ({max_new_tokens})"
            f" = {limit} tokens, e.g. row {row} with {len(prompt_ids[long[0]])} tokens; "
            "shorten or remove them, lower --max_new_tokens, or add --drop_long_prompts true "
            "to skip them"
        )
    keep = sorted(set(range(len(prompt_ids))) - set(long))
    kept = dataclasses.replace(data, examples=[data.examples[i] for i in keep])
    return kept, [prompt_ids[i] for i in keep], len(long)


def model_context(model_config: Any) -> int | None:
    """Positions a model can attend over (``max_position_embeddings``), if it says."""
    value = getattr(model_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None
