"""Heterogeneous dense Conformer encoder (ESPnet name ``pruned_conformer``).

The output of :mod:`espnet_prune.shrink`: every block may keep a different
number of heads, FFN units and conv channels, or lose whole modules. Its
``encoder_conf`` is the dense ``ConformerEncoder`` options plus
``block_structures``, one mapping per block::

    encoder: pruned_conformer
    encoder_conf:
        output_size: 256
        attention_heads: 4        # dense sizes: d_k = output_size / attention_heads
        linear_units: 1024
        ...
        block_structures:
        - {heads: 3, ffn1_units: 610, ffn2_units: 702, conv_channels: 198}
        - {heads: 0, ffn1_units: 0, ffn2_units: 511, conv_channels: 0}   # MHSA and conv gone
        subsampling_channels: [97, 120]   # optional: output channels of each front-end Conv2d
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

from espnet_prune.options import inherit_signature

from espnet_prune.blocks import ConformerBlock, resize_block
from espnet_prune.frontend import SUBSAMPLING_CLASSES, resize_subsampling
from espnet_prune.structure import (
    MODULES,
    BlockStructure,
    ConformerDims,
    check_supported_conf,
    structures_from_conf,
)


@inherit_signature(ConformerEncoder)
class PrunedConformerEncoder(ConformerEncoder):
    """ConformerEncoder whose blocks have the sizes listed in ``block_structures``.

    Args:
        input_size: input feature dimension.
        block_structures: one ``{heads, ffn1_units, ffn2_units, conv_channels}``
            mapping per block (0 removes the module).
        subsampling_channels: output channels of each Conv2d of the front end
            (default: ``output_size`` each, ESPnet's dense front end).
        **conformer_kwargs: the dense ``ConformerEncoder`` options.
    """

    def __init__(
        self,
        input_size: int,
        block_structures: List[Mapping[str, Any]],
        subsampling_channels: Optional[List[int]] = None,
        **conformer_kwargs: Any,
    ) -> None:
        check_supported_conf(conformer_kwargs)
        super().__init__(input_size, **conformer_kwargs)
        self.dims = ConformerDims.from_encoder_conf(input_size, conformer_kwargs)
        if subsampling_channels is not None:
            if self.dims.input_layer not in SUBSAMPLING_CLASSES:
                raise ValueError(
                    "encoder_conf.subsampling_channels needs a conv front end, got "
                    f"input_layer={self.dims.input_layer!r}"
                )
            resize_subsampling(self.embed, subsampling_channels, "encoder_conf.subsampling_channels")
            self.dims = dataclasses.replace(
                self.dims, subsampling_channels=tuple(int(c) for c in subsampling_channels)
            )
        self.block_structures = structures_from_conf(block_structures, self.dims)
        for i, (layer, s) in enumerate(zip(self.encoders, self.block_structures)):
            block = ConformerBlock.from_espnet_layer(layer)
            resize_block(block, {name: s.units(name) for name in MODULES})
            self.encoders[i] = block

    def structure(self) -> List[BlockStructure]:
        return list(self.block_structures)


def pruned_encoder_conf(
    dense_conf: Mapping[str, Any],
    structure: List[BlockStructure],
    subsampling_channels: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """``encoder_conf`` of a :class:`PrunedConformerEncoder` from the dense options."""
    conf = {k: v for k, v in dense_conf.items() if k not in ("gate_granularities", "gate_conf")}
    conf["block_structures"] = [s.to_dict() for s in structure]
    if subsampling_channels is not None:
        conf["subsampling_channels"] = [int(c) for c in subsampling_channels]
    return conf
