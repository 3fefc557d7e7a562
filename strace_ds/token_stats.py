"""Moved to strace_ds.model.logprob_kernels; this re-export stays for one release."""

from strace_ds.model.logprob_kernels import *  # noqa: F403
from strace_ds.model.logprob_kernels import _backward_tiles  # noqa: F401
