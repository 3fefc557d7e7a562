"""Moved to strace_ds.train.setup; this re-export stays for one release."""

from strace_ds.train.setup import *  # noqa: F403
