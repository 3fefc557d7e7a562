"""Moved to strace_ds.rollout.sglang.server; this re-export stays for one release."""

from strace_ds.rollout.sglang.server import *  # noqa: F403
