"""Moved to strace_ds.train.loop; this re-export stays for one release."""

from strace_ds.distributed import init_distributed  # noqa: F401
from strace_ds.train import setup as builders  # noqa: F401
from strace_ds.train.loop import *  # noqa: F403
