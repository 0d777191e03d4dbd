"""The cost model: exact and expected parameters and MACs of every gated part.

One vocabulary (:mod:`~espnet_prune.cost.metrics`): a cost has a *metric* (``params``,
``macs``) and a *scope* (``blocks``, ``encoder``, ``model``); a pruning target names
one of each (:data:`espnet_prune.target_kinds.TARGET_KINDS`) and every gated part reports
its unit groups for a (metric, scope) pair. With integer counts (a structure) each
function gives the exact count of the shrunk model; with gate probabilities (tensors)
the differentiable expected cost that pruning training drives to its target (DESIGN 2.2).

=================================  =====================================================
module                             costs of
=================================  =====================================================
:mod:`~.metrics`                   the vocabulary (``METRICS``, ``SCOPES``), ``sparsity``
:mod:`~.subsampling`               ESPnet's conv front ends (the (kernel, stride) table)
:mod:`~.encoder`                   Conformer modules and blocks, the whole encoder
:mod:`~.decoder`                   Transformer decoder layers and the whole decoder
:mod:`~.latency`                   seconds of a beam-search decode (the ``decode`` metric)
=================================  =====================================================

MACs count multiply-accumulates of matrix products and convolutions (biases, norms,
activations and softmax are not counted), at ``seconds`` of audio with
``frames_per_second`` feature frames (100 for a 10 ms hop).
"""

from espnet_prune.cost.decoder import (
    DecoderLayerCounts,
    decoder_cost,
    decoder_fixed_cost,
    decoder_global_params,
    decoder_layer_memory_macs,
    decoder_layer_params,
    decoder_layer_token_macs,
    sublayer_costs,
)
from espnet_prune.cost.encoder import (
    ModuleCounts,
    block_constant_cost,
    block_macs,
    block_params,
    counts_from_structure,
    encoder_cost,
    frames_after_frontend,
    frontend_cost,
    module_unit_cost,
    structure_cost,
)
from espnet_prune.cost.latency import LatencyTable, decode_groups, decode_seconds
from espnet_prune.cost.metrics import METRICS, PRICED_METRICS, SCOPES, Number, check_metric, sparsity
from espnet_prune.cost.subsampling import (
    SUBSAMPLING_CONVS,
    conv_output_sizes,
    subsampling_cost,
    subsampling_cost_terms,
    subsampling_unit_costs,
)

__all__ = [
    "METRICS", "PRICED_METRICS", "SCOPES", "Number", "check_metric", "sparsity",
    "LatencyTable", "decode_groups", "decode_seconds",
    "SUBSAMPLING_CONVS", "conv_output_sizes", "subsampling_cost", "subsampling_cost_terms",
    "subsampling_unit_costs",
    "ModuleCounts", "block_constant_cost", "block_macs", "block_params", "counts_from_structure",
    "encoder_cost", "frames_after_frontend", "frontend_cost", "module_unit_cost", "structure_cost",
    "DecoderLayerCounts", "decoder_cost", "decoder_fixed_cost", "decoder_global_params", "decoder_layer_memory_macs",
    "decoder_layer_params", "decoder_layer_token_macs", "sublayer_costs",
]
