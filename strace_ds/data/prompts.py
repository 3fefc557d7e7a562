"""Prompt templates: question + instruction as one user turn, rendered by the model's chat template.

The instruction asks for a ``\\boxed{}`` answer because that is what
:func:`strace_ds.rewards.grade_answer` reads. The synthetic task
(:mod:`strace_ds.data.arithmetic`) has its own shorter instruction, already part of its stored
prompts; pass ``instruction=""`` for those.
"""

from __future__ import annotations

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
