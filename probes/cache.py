"""Key/value caches for runs that continue from a clean pass.

- :class:`SharedPrefixCache`: the executor's cache. The clean prefix's keys and values, then
  whatever the suffix and each decoding step write, in buffers allocated once (no ``torch.cat``
  per layer and step); or, adopted, the clean pass's own buffers, continued in place.
- :class:`ReservedLayer` / :func:`reserved_cache`: what a clean pass writes into when a decode
  is to continue in its buffers (``clean_pass(..., reserve=n)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer


class SharedPrefixCache:
    """A KV cache for runs that share the clean prefix, with its buffers allocated once.

    Per layer, keys and values [rows, kv_heads, capacity, dim]: the clean prefix's, then what
    the suffix and each decoding step write in place (no ``torch.cat`` of the whole cache per
    layer or step). With ``one_shot`` every layer runs once (a sweep never reads a layer's keys
    again after it ran), so the layers on one device share one buffer pair and the prefix is
    copied in on each layer's update. Decoder layers only call ``update``; this is all they need.

    Every buffer lives on the device of its layer's clean keys (the layer's own device when the
    model is spread over several), so a layer never reads or writes another device's memory.
    """

    def __init__(self, keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]], prefix: int,
                 rows: int, capacity: int, one_shot: bool = False) -> None:
        self.prefix, self.one_shot = prefix, one_shot
        self.prefix_kv = [(k[:, :, :prefix], v[:, :, :prefix]) for k, v in keys_values]
        shared: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.buffers = []
        for keys, _ in keys_values:
            shape = (rows, keys.shape[1], capacity, keys.shape[3])
            kind = (keys.device, keys.dtype, shape) if one_shot else len(self.buffers)
            if kind not in shared:
                shared[kind] = (keys.new_empty(shape), keys.new_empty(shape))
            self.buffers.append(shared[kind])
        self.lengths = [prefix] * len(keys_values)
        if not one_shot:
            for layer in range(len(keys_values)):
                self._copy_prefix(layer, rows)

    @classmethod
    def adopting(cls, buffers: Sequence[tuple[torch.Tensor, torch.Tensor]], prefix: int) -> SharedPrefixCache:
        """A cache that continues in ``buffers`` (a clean pass's, with room reserved) from
        ``prefix`` on, overwriting what follows in place: no copy of the prefix."""
        cache = cls.__new__(cls)
        cache.prefix, cache.one_shot, cache.prefix_kv = prefix, False, None
        cache.buffers = list(buffers)
        cache.lengths = [prefix] * len(cache.buffers)
        return cache

    def _copy_prefix(self, layer: int, rows: int) -> None:
        keys, values = self.buffers[layer]
        prefix_keys, prefix_values = self.prefix_kv[layer]
        keys[:rows, :, : self.prefix] = prefix_keys  # broadcast over the rows
        values[:rows, :, : self.prefix] = prefix_values

    def update(self, key, value, layer_idx, *args, **kwargs):
        rows, start = key.shape[0], self.lengths[layer_idx]
        end = start + key.shape[2]
        if self.one_shot:
            self._copy_prefix(layer_idx, rows)
        else:
            self.lengths[layer_idx] = end
        keys, values = self.buffers[layer_idx]
        keys[:rows, :, start:end] = key
        values[:rows, :, start:end] = value
        return keys[:rows, :, :end], values[:rows, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]


class ReservedLayer(DynamicLayer):
    """A cache layer that writes its keys and values into buffers with ``reserve`` positions
    of room after the first update (and grows like :class:`DynamicLayer` beyond that), so a
    decode can continue in the same memory instead of copying the prompt's keys and values.
    Made for one forward (``clean_pass``): the generation-time edits of a cache (crop, beam
    reordering) replace ``keys`` / ``values`` without the buffers and are not supported."""

    def __init__(self, reserve: int) -> None:
        super().__init__()
        self.reserve = reserve

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.length, self.buffers = 0, None
        end = self.length + key_states.shape[-2]
        if self.buffers is None or end > self.buffers[0].shape[-2]:
            grown = []
            for old, new in zip(self.buffers or (None, None), (key_states, value_states)):
                buffer = new.new_empty(*new.shape[:2], end + self.reserve, new.shape[-1])
                if old is not None:
                    buffer[:, :, : self.length] = old[:, :, : self.length]
                grown.append(buffer)
            self.buffers = tuple(grown)
        keys, values = self.buffers
        keys[:, :, self.length : end] = key_states
        values[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values


def reserved_cache(model: torch.nn.Module, reserve: int) -> DynamicCache | None:
    """A :class:`DynamicCache` of :class:`ReservedLayer`, which keep every key (a sliding-window
    layer's too: the engine applies the window in its own masks, and a continuation needs the
    keys a sliding cache would drop), or None where the model's cache has other kinds of layers
    (chunked, linear attention, ...): those keep their own cache."""
    cache = DynamicCache(config=model.config)
    full = (DynamicLayer, DynamicSlidingWindowLayer)
    if not cache.layers or any(type(layer) not in full for layer in cache.layers):
        return None
    cache.layers = [ReservedLayer(reserve) for _ in cache.layers]
    return cache


def every_key_cache(model: torch.nn.Module) -> DynamicCache | None:
    """A :class:`DynamicCache` for ``generate`` whose sliding-window layers keep every key,
    like the full ones, or None where no layer of the model slides (its own cache does so
    already). Edits that name key positions (the nnsight engine's; :mod:`probes.attention`'s
    plans) read a call's keys as positions ``0..kv_len-1``, which a sliding layer's cache, that
    drops the keys behind its window, would shift; the window itself stays in the model's own
    mask, so the numbers are the same."""
    cache = DynamicCache(config=model.config)
    if not any(isinstance(layer, DynamicSlidingWindowLayer) for layer in cache.layers):
        return None
    cache.layers = [DynamicLayer() if isinstance(layer, DynamicSlidingWindowLayer) else layer
                    for layer in cache.layers]
    return cache
