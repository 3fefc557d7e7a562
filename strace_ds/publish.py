"""Moved to strace_ds.storage.publish; this re-export stays for one release."""

from strace_ds.storage.publish import *  # noqa: F403
