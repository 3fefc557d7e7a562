"""Prompt sources: the synthetic arithmetic task, local files and Hugging Face datasets."""

from strace_ds.data.types import PromptDataset, PromptExample

__all__ = ["PromptDataset", "PromptExample"]
