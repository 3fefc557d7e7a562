"""Moved to strace_ds.model.fused_head; this re-export stays for one release."""

from strace_ds.model.fused_head import *  # noqa: F403
