"""The in-process engine's KV cache: keys and values written into reserved buffers.

transformers' default ``DynamicCache`` grows each layer's keys and values by ``torch.cat``
at every decoding step, so step ``t`` copies all ``t`` cached positions again: generating
``A`` tokens copies ``O(A^2)`` cache entries. At 512-token answers on the tiny policy that
copying was half of the generation time (measured: ``benchmarks/results_vs_trl.md``, long
shape, and the profile in ``docs/PERFORMANCE.md``).

:class:`ReservedLayer` keeps the same contract as transformers' ``DynamicLayer`` -- ``keys``
and ``values`` hold exactly the cached positions, so the attention masks and every cache
query see the same lengths -- but they are views of buffers reserved once for the whole
answer; a step writes only its own positions. The attention reads the same numbers in the
same order, so generation is bit-identical to the default cache (tested on sampled and
greedy decoding, left-padded prompts and early stops).

The buffers are reserved for ``prompt width + max_new_tokens`` positions up front: the size
the default cache reaches whenever one row of the batch runs to the cap, reached at the first
step instead of the last (a batch that cannot hold it fails at once, not mid-rollout). Should
a caller write past the reservation, or replace ``keys``/``values`` itself (beam search's
reordering and cropping do), the layer re-reserves from the current contents: never a wrong
answer.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers.cache_utils import DynamicCache, DynamicLayer

# ``generate`` takes a cache object as ``cache=`` from transformers 5.24 on (``past_key_values``
# before, with a different layer API): older versions keep transformers' own cache.
TESTED_FROM = Version("5.24")


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are prefixes of reserved buffers."""

    def __init__(self, reserve: int) -> None:
        super().__init__()
        if reserve < 1:
            raise ValueError(f"ReservedLayer: reserve must be >= 1 position, got {reserve}")
        self.reserve = reserve
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._handed_out: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self._reallocate(self.reserve)
        self.is_initialized = True

    def _reallocate(self, capacity: int) -> None:
        """Fresh buffers of ``capacity`` positions holding the current keys and values."""
        n = self.keys.shape[-2]
        buffers = []
        for current in (self.keys, self.values):
            shape = (*current.shape[:-2], capacity, current.shape[-1])
            buffer = current.new_empty(shape)
            buffer[..., :n, :] = current
            buffers.append(buffer)
        self._key_buffer, self._value_buffer = buffers
        self.keys = self._key_buffer[..., :n, :]
        self.values = self._value_buffer[..., :n, :]
        self._handed_out = (self.keys, self.values)

    def _holds_views(self) -> bool:
        """True while ``keys``/``values`` are still the prefixes this layer handed out."""
        return self.keys is self._handed_out[0] and self.values is self._handed_out[1]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2]
        end = n + key_states.shape[-2]
        capacity = self._key_buffer.shape[-2]
        if end > capacity:  # doubling keeps the copies linear in the length if it was short
            self._reallocate(max(end, 2 * capacity))
        elif not self._holds_views():  # the caller replaced them: take them in, same room
            self._reallocate(capacity)
        self._key_buffer[..., n:end, :] = key_states
        self._value_buffer[..., n:end, :] = value_states
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        self._handed_out = (self.keys, self.values)
        return self.keys, self.values

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        self._handed_out = (None, None)
        super().reset()


def reserved_cache(model: torch.nn.Module, reserve: int) -> DynamicCache | None:
    """transformers' default cache for ``model`` with its plain layers reserved for ``reserve``.

    ``None`` (let ``generate`` build its own) for models that do not take a ``DynamicCache``
    (encoder-decoders, recurrent architectures) or that ask for another cache in their
    generation config. Sliding-window and other special layers are kept as transformers
    builds them.
    """
    if Version(transformers.__version__).release < TESTED_FROM.release:
        return None
    config = model.config
    generation_config = getattr(model, "generation_config", None)
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if (
        getattr(config, "is_encoder_decoder", False)
        or getattr(generation_config, "cache_implementation", None) is not None
        or supports is None
        or not supports()
    ):
        return None
    cache = DynamicCache(config=config.get_text_config(decoder=True))
    if not cache.layers:  # layers built lazily: nothing typed to replace
        return None
    cache.layers = [
        ReservedLayer(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache
