"""Moved to strace_ds.train.metrics; this re-export stays for one release."""

from strace_ds.train.metrics import *  # noqa: F403
