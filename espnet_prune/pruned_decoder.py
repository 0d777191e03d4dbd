"""Transformer decoder with removable heads, units and sublayers (ESPnet ``pruned_transformer``).

:class:`PrunedTransformerDecoder` is ESPnet's ``TransformerDecoder`` (every option of it is
accepted) plus an optional ``layer_structures`` entry, one mapping per layer::

    decoder: pruned_transformer
    decoder_conf:
        attention_heads: 4        # dense sizes: d_k = attention_dim / attention_heads
        linear_units: 2048
        num_blocks: 6
        ...
        layer_structures:
        - {self_heads: 4, src_heads: 3, ffn_units: 1500}
        - {self_heads: 0, src_heads: 4, ffn_units: 700}    # no self-attention (nor norm1)
        - {self_heads: 0, src_heads: 0, ffn_units: 0}      # layer removed

Rules:

* a size of 0 removes that sublayer together with its LayerNorm (``norm1`` self-attention,
  ``norm2`` source attention, ``norm3`` FFN) and, with ``concat_after``, its
  ``concat_linear``; the residual branch is skipped;
* kept heads keep ``d_k = attention_dim / attention_heads`` (the dense value);
* a layer with all three sizes 0 is removed entirely. The remaining layers are
  renumbered ``decoders.0 .. decoders.{L'-1}`` in their original order (state-dict keys,
  ``gradient_checkpoint_layers`` and decoding states count kept layers only);
  :attr:`PrunedTransformerDecoder.kept_layers` maps each kept layer to its index in
  ``layer_structures``, and :meth:`PrunedTransformerDecoder.structure` still lists all
  ``num_blocks`` entries. A decoder whose layers are either dense or removed therefore has
  exactly the state dict of an ESPnet ``transformer`` decoder with fewer blocks.

Without ``layer_structures`` the decoder is ESPnet's dense decoder (same modules, same
state-dict keys: an ESPnet ``transformer`` checkpoint loads with every key matched). It
decodes with the fast exact search of :class:`~espnet_prune.fast_decoder.FastTransformerDecoder`;
dense ESPnet decoders are converted into it for decoding
(:func:`espnet_prune.inference.fast_decoding`). Its exact cost is
:func:`espnet_prune.cost.decoder_cost`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from espnet.nets.pytorch_backend.transformer.repeat import MultiSequential
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

from espnet_prune.cost import Number, decoder_cost
from espnet_prune.decoder_layer import decoder_layer_structure, resize_decoder_layer
from espnet_prune.fast_decoder import FastTransformerDecoder
from espnet_prune.options import inherit_signature
from espnet_prune.structure import DecoderLayerStructure, decoder_structures_from_conf


@inherit_signature(TransformerDecoder)
class PrunedTransformerDecoder(FastTransformerDecoder):
    """ESPnet ``TransformerDecoder`` with per-layer sizes and fast exact decoding.

    Args:
        vocab_size: output tokens V.
        encoder_output_size: attention dimension d.
        layer_structures: optional, one ``{self_heads, src_heads, ffn_units}`` mapping per
            layer (``num_blocks`` entries; see the module docstring for removal rules).
        **transformer_kwargs: every ``TransformerDecoder`` option (``attention_heads``,
            ``linear_units``, ``num_blocks``, ``normalize_before``, ``concat_after`` ...),
            the dense sizes.

    Attributes:
        dims: :class:`~espnet_prune.structure.DecoderDims` of the dense decoder.
        kept_layers: index in ``layer_structures`` of each entry of ``decoders``.
    """

    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        layer_structures: Optional[Sequence[Mapping[str, Any]]] = None,
        **transformer_kwargs: Any,
    ) -> None:
        super().__init__(vocab_size, encoder_output_size, **transformer_kwargs)
        if layer_structures is None:
            self.layer_structures: Optional[List[DecoderLayerStructure]] = None
            self.kept_layers = list(range(len(self.decoders)))
            return
        self.layer_structures = decoder_structures_from_conf(layer_structures, self.dims)
        if self.dims.attention_dim % self.dims.attention_heads:
            raise ValueError("decoder_conf.attention_heads must divide the attention dimension")
        kept, layers = [], []
        for i, (layer, s) in enumerate(zip(self.decoders, self.layer_structures)):
            if s.removed:
                continue
            kept.append(i)
            layers.append(resize_decoder_layer(layer, s))
        self.decoders = MultiSequential(*layers, layer_drop_rate=self.decoders.layer_drop_rate)
        self.kept_layers = kept

    def structure(self) -> List[DecoderLayerStructure]:
        """One structure per dense layer (removed layers as zeros)."""
        if self.layer_structures is not None:
            return list(self.layer_structures)
        return [decoder_layer_structure(layer) for layer in self.decoders]

    def cost(self, prefix_len: int = 20, memory_frames: int = 250,
             tokens: Optional[int] = None) -> Dict[str, Number]:
        """:func:`~espnet_prune.cost.decoder_cost` of this decoder."""
        return decoder_cost(self.dims, self.structure(), prefix_len, memory_frames, tokens)
