"""Moved to strace_ds.train.dropout; this re-export stays for one release."""

from strace_ds.train.dropout import *  # noqa: F403
