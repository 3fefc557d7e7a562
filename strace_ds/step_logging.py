"""Moved to strace_ds.train.step_log; this re-export stays for one release."""

from strace_ds.train.step_log import *  # noqa: F403
