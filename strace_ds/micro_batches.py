"""Moved to strace_ds.train.micro_batches; this re-export stays for one release."""

from strace_ds.train.micro_batches import *  # noqa: F403
