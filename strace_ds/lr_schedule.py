"""Moved to strace_ds.train.lr_schedule; this re-export stays for one release."""

from strace_ds.train.lr_schedule import *  # noqa: F403
