"""Moved to strace_ds.data.arithmetic; this re-export stays for one release."""

from strace_ds.data.arithmetic import *  # noqa: F403
