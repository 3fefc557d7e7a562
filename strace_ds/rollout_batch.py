"""Moved to strace_ds.model.batch and strace_ds.model.logprobs; this re-export stays for one
release."""

from strace_ds.model.batch import *  # noqa: F403
from strace_ds.model.logprobs import *  # noqa: F403
