"""Seeds: every random draw of a run derives from the run seed and where it happens.

Sampling is seeded per (run seed, step, rank, purpose), not from a global stream, so a resumed
run draws what the uninterrupted one would have, whatever ran before it.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def hash_seed(key: str) -> int:
    """A stable 32-bit seed of ``key`` (the first four bytes of its SHA-256, little-endian)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def step_seed(seed: int, step: int, rank: int, purpose: str) -> int:
    """A seed that depends only on (run seed, step, rank, purpose): resume-proof sampling."""
    return hash_seed(f"{seed}/{step}/{rank}/{purpose}")


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global generators (initialisation, anything unseeded)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
