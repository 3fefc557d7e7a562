"""Test-only stand-in for SGLang's compiled ``sgl_kernel`` (CPU test environments only).

Why it exists: SGLang 0.5.23 imports these names at import time in code shared by all devices,
but ``sglang-kernel`` has no CPU wheel. On the torch-native CPU path none is called for a dense
Qwen3 model, and every stub raises ``NotImplementedError`` if one ever is. Only names that
SGLang imports *unguarded* are listed; names imported inside ``try/except ImportError`` stay
absent so that SGLang takes its own fallback. See ../README.md.
"""

from sgl_kernel._stub import define

__version__ = "0.0.0+strace-ds-cpu-stub"

_NAMES: tuple[str, ...] = ()

define(globals(), "", _NAMES)
