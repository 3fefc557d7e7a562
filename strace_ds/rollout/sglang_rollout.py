"""Moved to strace_ds.rollout.sglang.ranks; this re-export stays for one release."""

from strace_ds.rollout.sglang.ranks import *  # noqa: F403
