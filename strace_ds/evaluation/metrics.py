"""avg@k and the unbiased pass@k estimator (Chen et al., 2021, "Evaluating Large Language Models
Trained on Code", eq. 1).

With ``n`` samples for a problem of which ``c`` are correct, the probability that a random
``k``-subset of them contains at least one correct sample is::

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

The product form avoids the huge binomials (``C(1024, 512)`` has 307 digits) and is what is
computed here. The benchmark score is the mean over problems. ``pass@1`` is exactly the mean of
``c / n`` over problems, i.e. avg@k when every problem has the same ``n``.
"""

from __future__ import annotations

from collections.abc import Sequence


def _check_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"pass_at_k: {name} must be an int, got {type(value).__name__}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` of them correct.

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (stable for
    any ``n``; every factor lies in ``[0, 1)``). Raises ValueError unless
    ``1 <= k <= n`` and ``0 <= c <= n``.

    Example::

        >>> pass_at_k(4, 1, 2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        0.5
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        _check_int(name, value)
    if n < 1:
        raise ValueError(f"pass_at_k: n (samples per problem) must be >= 1, got {n}")
    if not 1 <= k <= n:
        raise ValueError(
            f"pass_at_k: k={k} must satisfy 1 <= k <= n={n}; draw at least k samples per "
            "problem or ask for a smaller k"
        )
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c (correct samples) must be in [0, n={n}], got {c}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    survive = 1.0  # probability that a random k-subset has no correct sample
    for i in range(n - c + 1, n + 1):
        survive *= 1.0 - k / i
    return 1.0 - survive


def default_ks(n: int) -> list[int]:
    """The k reported for ``n`` samples per problem: powers of two below ``n``, then ``n``.

    ``default_ks(16) == [1, 2, 4, 8, 16]``, ``default_ks(12) == [1, 2, 4, 8, 12]``.
    """
    if n < 1:
        raise ValueError(f"default_ks: n (samples per problem) must be >= 1, got {n}")
    ks = [1 << p for p in range(n.bit_length()) if 1 << p < n]
    return ks + [n]


def check_ks(ks: Sequence[int], n: int) -> list[int]:
    """``ks`` sorted and deduplicated; ValueError naming ``ks`` when one is outside ``[1, n]``."""
    if not ks:
        raise ValueError("ks must not be empty; pass None for the defaults (1, 2, 4, ..., n)")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n]
    if bad:
        raise ValueError(
            f"ks={list(ks)}: every k must be an int in [1, {n}] (the samples drawn per "
            f"problem); offending: {bad}"
        )
    return sorted(set(ks))


def mean_pass_at_k(samples: Sequence[int], correct: Sequence[int], k: int) -> float:
    """Benchmark pass@k: the mean of :func:`pass_at_k` over problems (``n_i``, ``c_i``)."""
    if len(samples) != len(correct) or not samples:
        raise ValueError(
            f"mean_pass_at_k: samples ({len(samples)}) and correct ({len(correct)}) must be "
            "non-empty and of equal length, one entry per problem"
        )
    return sum(pass_at_k(n, c, k) for n, c in zip(samples, correct)) / len(samples)
