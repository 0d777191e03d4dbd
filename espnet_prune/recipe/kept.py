"""What a model kept of its dense architecture, read from its ``config.yaml``.

Sizes come from the options the shrinker writes (README, "Pruned encoder" and "Pruned
decoders"), against the dense sizes the same config names:

* front end: ``encoder_conf.subsampling_channels[i]`` of ``output_size`` output channels
  of each Conv2d of a ``conv2d*`` ``input_layer`` (:data:`espnet_prune.frontend.SUBSAMPLING_CONVS`);
* encoder block ``b``: ``encoder_conf.block_structures[b]`` = ``{heads, ffn1_units,
  conv_channels, ffn2_units}`` of ``attention_heads``, ``linear_units`` (macaron FFN),
  ``output_size`` (depthwise conv) and ``linear_units`` (:class:`espnet_prune.structure.BlockStructure`);
* decoder layer ``l``: ``decoder_conf.layer_structures[l]`` = ``{self_heads, src_heads,
  ffn_units}`` of ``attention_heads``, ``attention_heads`` and ``linear_units``
  (:class:`espnet_prune.structure.DecoderLayerStructure`).

A dense ``conformer`` / ``transformer`` (or a ``pruned_*`` one without structures) keeps
everything. 0 kept units means the whole module (or sublayer) was removed. A module the
dense architecture does not have (no macaron FFN, no conv module) has dense size 0 and
fraction nan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Tuple, Union

import numpy as np

#: Encoder columns: (label, BlockStructure field), in forward order.
ENCODER_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("FFN1 units", "ffn1_units"), ("MHA heads", "heads"),
    ("conv channels", "conv_channels"), ("FFN2 units", "ffn2_units"))
#: Decoder columns: (label, DecoderLayerStructure field).
DECODER_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("self-attn heads", "self_heads"), ("src-attn heads", "src_heads"), ("FFN units", "ffn_units"))

_ENCODERS = ("conformer", "pruned_conformer")
_DECODERS = ("transformer", "pruned_transformer")


class StructureError(ValueError):
    """The config cannot be read as a (pruned) Conformer / Transformer (names the key)."""


@dataclass
class KeptStructure:
    """Kept and dense sizes of one model (integer counts).

    Attributes:
        frontend_kept, frontend_dense: (convs,) output channels per Conv2d of the front end
            (empty without a conv front end).
        encoder_kept, encoder_dense: (blocks, 4) in :data:`ENCODER_COLUMNS` order.
        decoder_kept, decoder_dense: (layers, 3) in :data:`DECODER_COLUMNS` order (empty
            without a Transformer decoder).
    """

    frontend_kept: np.ndarray
    frontend_dense: np.ndarray
    encoder_kept: np.ndarray
    encoder_dense: np.ndarray
    decoder_kept: np.ndarray
    decoder_dense: np.ndarray

    @staticmethod
    def _fraction(kept: np.ndarray, dense: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(dense > 0, kept / np.maximum(dense, 1), np.nan)

    @property
    def frontend_fraction(self) -> np.ndarray:
        return self._fraction(self.frontend_kept, self.frontend_dense)

    @property
    def encoder_fraction(self) -> np.ndarray:
        return self._fraction(self.encoder_kept, self.encoder_dense)

    @property
    def decoder_fraction(self) -> np.ndarray:
        return self._fraction(self.decoder_kept, self.decoder_dense)

    @property
    def pruned(self) -> bool:
        """Whether anything is smaller than in the dense model."""
        return any((k < d).any() for k, d in (
            (self.frontend_kept, self.frontend_dense), (self.encoder_kept, self.encoder_dense),
            (self.decoder_kept, self.decoder_dense)))

    def to_dict(self) -> dict:
        """JSON-able kept / dense counts (lists)."""
        return {
            "frontend": {"kept": self.frontend_kept.tolist(), "dense": self.frontend_dense.tolist()},
            "encoder": {"columns": [f for _, f in ENCODER_COLUMNS],
                        "kept": self.encoder_kept.tolist(), "dense": self.encoder_dense.tolist()},
            "decoder": {"columns": [f for _, f in DECODER_COLUMNS],
                        "kept": self.decoder_kept.tolist(), "dense": self.decoder_dense.tolist()},
        }


def _encoder(config: Mapping[str, Any], where: str
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    from espnet_prune.cost import SUBSAMPLING_CONVS
    from espnet_prune.structure import ConformerDims, structures_from_conf

    name = config.get("encoder")
    if name not in _ENCODERS:
        raise StructureError(f"{where}: encoder {name!r} is not one of {list(_ENCODERS)} "
                             "(a gated model keeps its structure in the gates: shrink it first)")
    conf = dict(config.get("encoder_conf") or {})
    blocks = conf.pop("block_structures", None)
    try:
        dims = ConformerDims.from_encoder_conf(int(config.get("input_size") or 0), conf)
        structure = (structures_from_conf(blocks, dims) if blocks is not None
                     else dims.dense_structure())
    except (ValueError, KeyError, TypeError) as e:
        raise StructureError(f"{where}: {e}") from None
    dense = dims.dense_block()
    cols = [f for _, f in ENCODER_COLUMNS]
    enc_kept = np.array([[getattr(s, f) for f in cols] for s in structure], dtype=np.int64)
    enc_dense = np.array([[getattr(dense, f) for f in cols]] * dims.num_blocks,
                         dtype=np.int64).reshape(dims.num_blocks, len(cols))
    convs = SUBSAMPLING_CONVS.get(dims.input_layer, ())
    fe_dense = np.full(len(convs), dims.output_size, dtype=np.int64)
    channels = dims.subsampling_channels
    if channels is not None and len(channels) != len(convs):
        raise StructureError(f"{where}: encoder_conf.subsampling_channels has {len(channels)} "
                             f"entries, input_layer {dims.input_layer!r} has {len(convs)} Conv2d")
    fe_kept = np.array(channels if channels is not None else fe_dense, dtype=np.int64)
    return fe_kept, fe_dense, enc_kept, enc_dense, dims.output_size


def _decoder(config: Mapping[str, Any], d_model: int, where: str
             ) -> Tuple[np.ndarray, np.ndarray]:
    name = config.get("decoder")
    empty = np.zeros((0, len(DECODER_COLUMNS)), dtype=np.int64)
    if name is None or name == "none":
        return empty, empty
    if name not in _DECODERS:
        raise StructureError(f"{where}: decoder {name!r} is not one of {list(_DECODERS)} "
                             "(a gated model keeps its structure in the gates: shrink it first)")
    from espnet_prune.structure import DecoderDims, decoder_structures_from_conf

    conf = dict(config.get("decoder_conf") or {})
    layers = conf.get("layer_structures")
    try:
        dims = DecoderDims.from_decoder_conf(len(config.get("token_list") or ()), d_model, conf)
        structure = (decoder_structures_from_conf(layers, dims) if layers is not None
                     else dims.dense_structure())
    except (ValueError, KeyError, TypeError) as e:
        raise StructureError(f"{where}: {e}") from None
    cols = [f for _, f in DECODER_COLUMNS]
    dense = dims.dense_layer()
    kept = np.array([[getattr(s, f) for f in cols] for s in structure], dtype=np.int64)
    full = np.array([[getattr(dense, f) for f in cols]] * dims.num_blocks, dtype=np.int64)
    return kept.reshape(-1, len(cols)), full.reshape(-1, len(cols))


def kept_structure(config: Mapping[str, Any], where: str = "config.yaml") -> KeptStructure:
    """Kept and dense sizes of the model an ESPnet ``config.yaml`` (as a dict) describes.

    Args:
        config: the parsed YAML (``encoder``, ``encoder_conf``, ``decoder``,
            ``decoder_conf``, ``input_size``...).
        where: the file name used in error messages.

    Raises:
        StructureError: an unsupported encoder / decoder or inconsistent sizes.
    """
    fe_kept, fe_dense, enc_kept, enc_dense, d_model = _encoder(config, where)
    dec_kept, dec_dense = _decoder(config, d_model, where)
    return KeptStructure(frontend_kept=fe_kept, frontend_dense=fe_dense, encoder_kept=enc_kept,
                         encoder_dense=enc_dense, decoder_kept=dec_kept, decoder_dense=dec_dense)


def load_kept_structure(path: Union[str, Path]) -> KeptStructure:
    """:func:`kept_structure` of a ``config.yaml`` file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model config not found: {p}")
    with p.open(encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, Mapping):
        raise StructureError(f"{p}: expected a mapping")
    return kept_structure(config, where=str(p))


def row_labels(k: KeptStructure) -> Tuple[List[str], List[str], List[str]]:
    """Row labels of the front end convs, encoder blocks and decoder layers."""
    return ([f"conv {i + 1}" for i in range(len(k.frontend_kept))],
            [f"block {i}" for i in range(len(k.encoder_kept))],
            [f"layer {i}" for i in range(len(k.decoder_kept))])
