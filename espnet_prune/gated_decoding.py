"""Incremental decoding by a gated decoder: ESPnet's search entry points, by mode.

:class:`GatedDecoding` is mixed into :class:`~espnet_prune.gated_decoder.GatedTransformerDecoder`
ahead of its decoding base class: in eval mode every entry point (``forward_one_step``,
``score``, ``batch_score``, ``init_state``, ``forward_partially_AR``) runs the shrunk decoder
of the eval selection (``decoding_decoder()``, the fast exact decoder); in train mode the
base class's, with masks sampled for the call (``_apply_masks()``).
"""

from __future__ import annotations

from typing import Any, List, Optional

import torch

Tensor = torch.Tensor


class GatedDecoding:
    """The incremental-decoding entry points of a gated decoder (see the module docstring);
    the host provides ``decoding_decoder()`` and ``_apply_masks()``."""

    def _dispatch(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """An incremental-decoding entry point: in eval mode the shrunk decoder's
        ``method``; in train mode ESPnet's, with masks sampled for this call."""
        if not self.training:
            return getattr(self.decoding_decoder(), method)(*args, **kwargs)
        self._apply_masks()
        return getattr(super(), method)(*args, **kwargs)

    def forward_one_step(self, tgt: Tensor, tgt_mask: Tensor, memory: Tensor,
                         memory_mask: Optional[Tensor] = None, *,
                         cache: Optional[List[Tensor]] = None, return_hs: bool = False):
        """ESPnet's ``forward_one_step`` (eval mode: the shrunk decoder's cache has one entry
        per kept layer)."""
        return self._dispatch("forward_one_step", tgt, tgt_mask, memory, memory_mask,
                          cache=cache, return_hs=return_hs)

    def score(self, ys: Tensor, state: Any, x: Tensor, return_hs: bool = False):
        """Next-token log-probs ``(V,)`` of one hypothesis ``ys`` ``(t,)`` on memory ``x``
        ``(T, d)`` (ESPnet ``BeamSearch``)."""
        return self._dispatch("score", ys, state, x, return_hs=return_hs)

    def batch_score(self, ys: Tensor, states: List[Any], xs: Tensor, return_hs: bool = False,
                    xs_mask: Optional[Tensor] = None):
        """Next-token log-probs ``(B, V)`` of hypotheses ``ys`` ``(B, t)`` (ESPnet
        ``BatchBeamSearch``); see :meth:`PrunedTransformerDecoder.batch_score`."""
        return self._dispatch("batch_score", ys, states, xs, return_hs=return_hs, xs_mask=xs_mask)

    def init_state(self, x: Tensor) -> None:
        """Start of an utterance: clears the memory key/value cache (of the shrunk decoder
        in eval mode)."""
        if not self.training:
            return self.decoding_decoder().init_state(x)
        return super().init_state(x)

    batch_init_state = init_state

    def forward_partially_AR(self, tgt, tgt_mask, tgt_lengths, memory, cache=None):
        """ESPnet's partially autoregressive step (the shrunk decoder needs every sublayer
        and source head of every kept layer)."""
        return self._dispatch("forward_partially_AR", tgt, tgt_mask, tgt_lengths, memory, cache=cache)
