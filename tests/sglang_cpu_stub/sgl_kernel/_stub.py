"""Build functions that raise when called: the only thing this test-only package provides."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn


def stub(qualname: str) -> Callable[..., NoReturn]:
    """Return a function named like ``sgl_kernel.<qualname>`` that raises if called."""

    def _unavailable(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"sgl_kernel.{qualname} was called, but this is the strace_ds CPU test stub "
            "(tests/sglang_cpu_stub): SGLang's compiled kernels are not available on CPU. "
            "Use the torch-native CPU path or install the real sglang-kernel on a GPU machine."
        )

    _unavailable.__name__ = qualname.rsplit(".", 1)[-1]
    _unavailable.__qualname__ = qualname
    return _unavailable


def define(namespace: dict[str, Any], module: str, names: tuple[str, ...]) -> None:
    """Bind a raising stub for each of ``names`` in a module's ``namespace``."""
    prefix = f"{module}." if module else ""
    for name in names:
        namespace[name] = stub(prefix + name)
