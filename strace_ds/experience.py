"""Moved to strace_ds.train.experience; this re-export stays for one release."""

from strace_ds.train.experience import *  # noqa: F403
