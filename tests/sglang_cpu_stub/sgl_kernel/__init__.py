"""Test-only stand-in for SGLang's compiled ``sgl_kernel`` (CPU test environments only).

Why it exists: SGLang 0.5.23 imports these names at import time in code shared by all devices,
but ``sglang-kernel`` has no CPU wheel. On the torch-native CPU path none is called for a dense
Qwen3 model, and every stub raises ``NotImplementedError`` if one ever is. Only names that
SGLang imports *unguarded* are listed; names imported inside ``try/except ImportError`` stay
absent so that SGLang takes its own fallback. See ../README.md.
"""

from sgl_kernel._stub import define

__version__ = "0.0.0+strace-ds-cpu-stub"

# Found by starting `sglang.launch_server --device cpu` on a Qwen3 checkpoint and adding each
# name an ImportError named (sglang 0.5.23). All are `*_cpu` kernels that SGLang's CPU code
# paths import at module level (KV-cache moves, request-to-token pool, speculative decoding);
# the torch-native path used for a dense model without speculative decoding never calls them.
_NAMES: tuple[str, ...] = (
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_req_to_token_pool_cpu",
    "build_tree_kernel_efficient_cpu",
    "copy_all_layer_kv_cache_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "verify_tree_greedy_cpu",
)

define(globals(), "", _NAMES)
