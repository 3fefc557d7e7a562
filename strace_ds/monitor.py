"""Moved to strace_ds.train.monitor; this re-export stays for one release."""

from strace_ds.train.monitor import *  # noqa: F403
