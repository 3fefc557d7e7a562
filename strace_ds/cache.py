"""Where the project keeps what it builds on a machine: ``$STRACE_DS_CACHE``, else
``~/.cache/strace_ds`` (tiny-policy builds, DeepSpeed's compiled ops, the SGLang env)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$STRACE_DS_CACHE`` if set, else ``~/.cache/strace_ds``."""
    return Path(os.environ.get("STRACE_DS_CACHE") or Path.home() / ".cache" / "strace_ds")
