"""Moved to strace_ds.storage.checkpoint; this re-export stays for one release."""

from strace_ds.storage.checkpoint import *  # noqa: F403
