"""Moved to strace_ds.losses.advantages; this re-export stays for one release."""

from strace_ds.losses.advantages import *  # noqa: F403
