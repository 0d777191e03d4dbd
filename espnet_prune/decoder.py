"""Transitional: the decoder modules' names at their old place (removed once callers moved).

The decoder side now mirrors the encoder side: :mod:`espnet_prune.structure` (dims and
layer structures), :mod:`espnet_prune.decoder_layer` (layers and slicing),
:mod:`espnet_prune.cost` (exact cost), :mod:`espnet_prune.fast_attention` and :mod:`espnet_prune.fast_decoder` (the fast exact
search), :mod:`espnet_prune.pruned_decoder` (``pruned_transformer``),
:mod:`espnet_prune.inference` (``Speech2Text``) and :mod:`espnet_prune.flops`.
"""

from espnet_prune.cost import (  # noqa: F401
    DecoderLayerCounts,
    decoder_cost,
    decoder_global_params,
    decoder_layer_memory_macs,
    decoder_layer_params,
    decoder_layer_token_macs,
)
from espnet_prune.decoder_layer import (  # noqa: F401
    PrunedDecoderLayer,
    decoder_layer_structure,
    remove_sublayer,
    resize_decoder_layer,
    run_sublayers,
    slice_decoder_layer,
)
from espnet_prune.fast_decoder import DecoderState, espnet_caches_memory_kv  # noqa: F401
from espnet_prune.flops import count_decoder_macs  # noqa: F401
from espnet_prune.inference import espnet_decoding, fast_decoding  # noqa: F401
from espnet_prune.pruned_decoder import PrunedTransformerDecoder  # noqa: F401
from espnet_prune.structure import (  # noqa: F401
    SUBLAYERS,
    DecoderDims,
    DecoderLayerStructure,
    decoder_structures_from_conf,
    transformer_options,
)
