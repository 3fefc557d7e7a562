"""Moved to strace_ds.rollout.sglang.weights; this re-export stays for one release."""

from strace_ds.rollout.sglang.weights import *  # noqa: F403
