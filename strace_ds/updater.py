"""Moved to strace_ds.train.updater; this re-export stays for one release."""

from strace_ds.train.updater import *  # noqa: F403
