"""What a (pruned) model looks like: dense dimensions and per-block / per-layer structure.

:class:`ConformerDims` holds the dense encoder's hyper-parameters (the ones the
cost model and the shrinker need), read from ESPnet ``encoder_conf`` options.
:class:`BlockStructure` says how much of one block is left: heads, FFN units and
conv channels kept, where 0 means the whole module is gone. The decoder side mirrors it:
:class:`DecoderDims` (dense Transformer decoder, from ``decoder_conf``) and
:class:`DecoderLayerStructure` (self / source heads and FFN units kept per layer).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding, ScaledPositionalEncoding
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

#: Block modules in forward order: module name -> (unit gate name, attribute on the layer).
MODULES: Dict[str, tuple] = {
    "ffn1": ("ffn1_units", "feed_forward_macaron"),
    "mha": ("heads", "self_attn"),
    "conv": ("conv_channels", "conv_module"),
    "ffn2": ("ffn2_units", "feed_forward"),
}
#: Every gate granularity a gated block can have.
GRANULARITIES: tuple = (
    tuple(MODULES) + tuple(unit for unit, _ in MODULES.values()) + ("subsampling_channels",)
)

_CONFORMER_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(ConformerEncoder.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}


@dataclass(frozen=True)
class ConformerDims:
    """Dense Conformer encoder dimensions.

    Attributes:
        input_size: feature dimension entering the encoder (e.g. 80 mel bins).
        output_size: model dimension d.
        attention_heads: dense number of heads h (d_k = d / h).
        linear_units: dense FFN hidden units.
        num_blocks: number of Conformer blocks.
        cnn_module_kernel: depthwise conv kernel size.
        macaron_style: whether blocks have the first (macaron) FFN.
        use_cnn_module: whether blocks have a conv module (and ``norm_final``).
        input_layer: ESPnet subsampling name (``conv2d``, ``conv2d6``, ``linear``...).
        attention_type: ``abs`` (plain MHSA), ``legacy_rel`` or ``rel``.
        scaled_pos_enc: whether the positional encoding has its learnable scale.
        normalize_before: pre-norm blocks (required by the gated encoder).
        subsampling_channels: output channels kept in each Conv2d of the front end
            (None: ``output_size`` in every conv, the dense front end).
    """

    input_size: int
    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    cnn_module_kernel: int = 31
    macaron_style: bool = False
    use_cnn_module: bool = True
    input_layer: str = "conv2d"
    attention_type: str = "legacy_rel"
    scaled_pos_enc: bool = False
    normalize_before: bool = True
    subsampling_channels: Optional[Tuple[int, ...]] = None

    @property
    def d_k(self) -> int:
        return self.output_size // self.attention_heads

    @classmethod
    def from_encoder_conf(cls, input_size: int, conf: Mapping[str, Any]) -> "ConformerDims":
        """Read the dims from ESPnet ``ConformerEncoder`` keyword arguments."""
        c = dict(_CONFORMER_DEFAULTS)
        c.update(conf)
        att = c["selfattention_layer_type"]
        pos = c["pos_enc_layer_type"]
        if c["rel_pos_type"] == "legacy":
            att = "legacy_rel_selfattn" if att == "rel_selfattn" else att
            pos = "legacy_rel_pos" if pos == "rel_pos" else pos
        attention_type = {
            "selfattn": "abs",
            "legacy_rel_selfattn": "legacy_rel",
            "rel_selfattn": "rel",
        }.get(att)
        if attention_type is None:
            raise ValueError(f"encoder_conf.selfattention_layer_type: unsupported {att!r}")
        return cls(
            input_size=int(input_size),
            output_size=int(c["output_size"]),
            attention_heads=int(c["attention_heads"]),
            linear_units=int(c["linear_units"]),
            num_blocks=int(c["num_blocks"]),
            cnn_module_kernel=int(c["cnn_module_kernel"]),
            macaron_style=bool(c["macaron_style"]),
            use_cnn_module=bool(c["use_cnn_module"]),
            input_layer=str(c["input_layer"]),
            attention_type=attention_type,
            scaled_pos_enc=pos == "scaled_abs_pos",
            normalize_before=bool(c["normalize_before"]),
            subsampling_channels=(
                tuple(int(x) for x in c["subsampling_channels"]) if c.get("subsampling_channels") else None
            ),
        )

    def dense_block(self) -> "BlockStructure":
        """Structure of an unpruned block."""
        return BlockStructure(
            heads=self.attention_heads,
            ffn1_units=self.linear_units if self.macaron_style else 0,
            ffn2_units=self.linear_units,
            conv_channels=self.output_size if self.use_cnn_module else 0,
        )

    def dense_structure(self) -> List["BlockStructure"]:
        return [self.dense_block() for _ in range(self.num_blocks)]

    def dense_dims(self) -> "ConformerDims":
        """These dimensions with the dense front end (every Conv2d at ``output_size``)."""
        return dataclasses.replace(self, subsampling_channels=None)


class KeptSizes:
    """Base of the per-block / per-layer structures: a frozen dataclass of kept unit
    counts (ints, 0 = removed) read from and written to a YAML mapping."""

    def to_dict(self) -> Dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "block"):
        """Parse one mapping of sizes; errors name ``where`` and the key."""
        names = [f.name for f in fields(cls)]
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected a mapping with keys {names}, got {d!r}")
        missing = [n for n in names if n not in d]
        unknown = [k for k in d if k not in names]
        if missing or unknown:
            raise ValueError(
                f"{where}: expected keys {names}, missing {missing}, unknown {unknown}"
            )
        values = {}
        for n in names:
            v = d[n]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
                raise ValueError(f"{where}.{n}: expected a whole number, got {v!r}")
            values[n] = int(v)
        negative = [n for n, v in values.items() if v < 0]
        if negative:
            raise ValueError(f"{where}: negative sizes for {negative}")
        return cls(**values)

    def check_within(self, dense: "KeptSizes", where: str) -> None:
        """Raise if any size exceeds the dense one."""
        for f in fields(self):
            if getattr(self, f.name) > getattr(dense, f.name):
                raise ValueError(
                    f"{where}.{f.name}={getattr(self, f.name)} exceeds the dense "
                    f"size {getattr(dense, f.name)}"
                )


@dataclass(frozen=True)
class BlockStructure(KeptSizes):
    """Units kept in one Conformer block; 0 means the module is removed.

    Attributes:
        heads: self-attention heads kept.
        ffn1_units: hidden units of the macaron (first) FFN kept.
        ffn2_units: hidden units of the second FFN kept.
        conv_channels: depthwise channels of the conv module kept.
    """

    heads: int
    ffn1_units: int
    ffn2_units: int
    conv_channels: int

    def units(self, module: str) -> int:
        """Kept units of a module named as in :data:`MODULES`."""
        return getattr(self, MODULES[module][0])

    def check_fits(self, dims: ConformerDims, where: str = "block") -> None:
        """Raise if this structure is larger than the dense block."""
        self.check_within(dims.dense_block(), where)


def structures_from_conf(
    blocks: Sequence[Mapping[str, Any]], dims: ConformerDims
) -> List[BlockStructure]:
    """Parse ``encoder_conf.block_structures`` and check it against ``dims``."""
    if len(blocks) != dims.num_blocks:
        raise ValueError(
            f"encoder_conf.block_structures has {len(blocks)} entries but "
            f"num_blocks is {dims.num_blocks}"
        )
    out = []
    for i, b in enumerate(blocks):
        s = BlockStructure.from_dict(b, where=f"encoder_conf.block_structures[{i}]")
        s.check_fits(dims, where=f"encoder_conf.block_structures[{i}]")
        out.append(s)
    return out


# --------------------------------------------------------------------------- decoder

#: Sublayers of a decoder layer: name -> (structure field, attribute, norm, concat linear).
SUBLAYERS: Dict[str, Tuple[str, str, str, Optional[str]]] = {
    "self_attn": ("self_heads", "self_attn", "norm1", "concat_linear1"),
    "src_attn": ("src_heads", "src_attn", "norm2", "concat_linear2"),
    "ffn": ("ffn_units", "feed_forward", "norm3", None),
}
#: Constructor options of ESPnet's ``TransformerDecoder``.
TRANSFORMER_PARAMS = set(inspect.signature(TransformerDecoder.__init__).parameters) - {"self"}


@dataclass(frozen=True)
class DecoderDims:
    """Dense Transformer decoder dimensions (what the cost model needs).

    Attributes:
        vocab_size: output tokens V.
        attention_dim: model dimension d (ESPnet's ``encoder_output_size``).
        attention_heads: dense heads h of both attentions (d_k = d / h).
        linear_units: dense FFN hidden units.
        num_blocks: dense number of layers.
        input_layer: ``embed`` (token ids) or ``linear`` (V-dim vectors).
        use_output_layer: whether the decoder ends with the d x V projection.
        normalize_before: pre-norm layers (and ``after_norm``).
        concat_after: ``x + linear(concat(x, att(x)))`` attention sublayers.
        qk_norm: per-head LayerNorm of queries and keys.
        scaled_pos_enc: ``ScaledPositionalEncoding`` (one learnable scale).
    """

    vocab_size: int
    attention_dim: int
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    input_layer: str = "embed"
    use_output_layer: bool = True
    normalize_before: bool = True
    concat_after: bool = False
    qk_norm: bool = False
    scaled_pos_enc: bool = False

    @property
    def d_k(self) -> int:
        return self.attention_dim // self.attention_heads

    def dense_layer(self) -> "DecoderLayerStructure":
        return DecoderLayerStructure(self.attention_heads, self.attention_heads, self.linear_units)

    def dense_structure(self) -> List["DecoderLayerStructure"]:
        return [self.dense_layer() for _ in range(self.num_blocks)]

    @classmethod
    def from_decoder_conf(
        cls, vocab_size: int, encoder_output_size: int, conf: Mapping[str, Any]
    ) -> "DecoderDims":
        """Dims from ESPnet ``decoder_conf`` options (``transformer`` / ``pruned_transformer``)."""
        defaults = {
            name: p.default
            for name, p in inspect.signature(TransformerDecoder.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        c = {**defaults, **{k: v for k, v in conf.items() if k != "layer_structures"}}
        pos = c.get("pos_enc_class", PositionalEncoding)
        return cls(
            vocab_size=int(vocab_size),
            attention_dim=int(encoder_output_size),
            attention_heads=int(c["attention_heads"]),
            linear_units=int(c["linear_units"]),
            num_blocks=int(c["num_blocks"]),
            input_layer=str(c["input_layer"]),
            use_output_layer=bool(c["use_output_layer"]),
            normalize_before=bool(c["normalize_before"]),
            concat_after=bool(c["concat_after"]),
            qk_norm=bool(c.get("qk_norm", False)),
            scaled_pos_enc=isinstance(pos, type) and issubclass(pos, ScaledPositionalEncoding),
        )


@dataclass(frozen=True)
class DecoderLayerStructure(KeptSizes):
    """Units kept in one decoder layer; 0 removes the sublayer (all 0: the layer).

    Attributes:
        self_heads: self-attention heads kept.
        src_heads: source-attention heads kept.
        ffn_units: FFN hidden units kept.
    """

    self_heads: int
    src_heads: int
    ffn_units: int

    def units(self, sublayer: str) -> int:
        """Kept units of a sublayer named as in :data:`SUBLAYERS`."""
        return getattr(self, SUBLAYERS[sublayer][0])

    @property
    def removed(self) -> bool:
        """True when nothing is left: the layer is dropped from the decoder."""
        return self.self_heads == 0 and self.src_heads == 0 and self.ffn_units == 0

    def check_fits(self, dims: DecoderDims, where: str = "layer") -> None:
        """Raise if this structure is larger than the dense layer."""
        self.check_within(dims.dense_layer(), where)


def decoder_structures_from_conf(
    layers: Sequence[Mapping[str, Any]], dims: DecoderDims
) -> List[DecoderLayerStructure]:
    """Parse ``decoder_conf.layer_structures`` and check it against ``dims``."""
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Sequence):
        raise ValueError("decoder_conf.layer_structures: expected a list with one "
                         f"{{self_heads, src_heads, ffn_units}} mapping per layer, got {layers!r}")
    if len(layers) != dims.num_blocks:
        raise ValueError(
            f"decoder_conf.layer_structures has {len(layers)} entries but num_blocks is "
            f"{dims.num_blocks}"
        )
    out = []
    for i, layer in enumerate(layers):
        where = f"decoder_conf.layer_structures[{i}]"
        s = DecoderLayerStructure.from_dict(layer, where=where)
        s.check_fits(dims, where=where)
        out.append(s)
    return out


def transformer_options(decoder: TransformerDecoder) -> Dict[str, Any]:
    """``TransformerDecoder`` constructor options of a built dense decoder, read from its modules."""
    embed = list(decoder.embed)
    if isinstance(embed[0], torch.nn.Embedding):
        input_layer, vocab = "embed", embed[0].num_embeddings
    else:
        input_layer, vocab = "linear", embed[0].in_features
    pos = embed[-1]
    opts: Dict[str, Any] = {
        "vocab_size": vocab,
        "encoder_output_size": decoder._output_size_bf_softmax,
        "num_blocks": len(decoder.decoders),
        "positional_dropout_rate": pos.dropout.p,
        "input_layer": input_layer,
        "use_output_layer": decoder.output_layer is not None,
        "pos_enc_class": type(pos),
        "normalize_before": decoder.normalize_before,
        "layer_drop_rate": getattr(decoder.decoders, "layer_drop_rate", 0.0),
        "gradient_checkpoint_layers": list(getattr(decoder, "gradient_checkpoint_layers", [])),
    }
    if input_layer == "linear":
        opts["dropout_rate"] = embed[2].p
    if len(decoder.decoders):
        layer = decoder.decoders[0]
        heads = {l.self_attn.h for l in decoder.decoders} | {l.src_attn.h for l in decoder.decoders}
        units = {l.feed_forward.w_1.out_features for l in decoder.decoders}
        if len(heads) != 1 or len(units) != 1:
            raise ValueError("the decoder's layers differ in size: not a dense TransformerDecoder")
        opts.update(
            attention_heads=layer.self_attn.h,
            linear_units=layer.feed_forward.w_1.out_features,
            dropout_rate=layer.dropout.p,
            self_attention_dropout_rate=layer.self_attn.dropout_rate,
            src_attention_dropout_rate=layer.src_attn.dropout_rate,
            concat_after=layer.concat_after,
            qk_norm=not isinstance(layer.self_attn.q_norm, torch.nn.Identity),
            use_flash_attn=bool(getattr(layer.self_attn, "use_flash_attn", False)),
        )
    return {k: v for k, v in opts.items() if k in TRANSFORMER_PARAMS | {"vocab_size", "encoder_output_size"}}


_UNSUPPORTED_ENCODER = {
    "normalize_before": (False, "post-norm blocks cannot drop modules cleanly"),
    "concat_after": (True, "concat_after is not supported"),
    "qk_norm": (True, "qk_norm is not supported"),
}


def check_supported_conf(conf: Dict[str, Any]) -> None:
    """An ``encoder_conf`` the gated and pruned encoders accept; else a ValueError naming the key."""
    for key, (bad, why) in _UNSUPPORTED_ENCODER.items():
        if key in conf and conf[key] == bad:
            raise ValueError(f"encoder_conf.{key}={bad}: {why} by the pruning encoders")
    if conf.get("positionwise_layer_type", "linear") != "linear":
        raise ValueError(
            "encoder_conf.positionwise_layer_type must be 'linear' for the pruning encoders"
        )
    if conf.get("input_layer", "conv2d") not in ("conv2d", "conv2d1", "conv2d2", "conv2d6", "conv2d8", "linear"):
        raise ValueError(
            f"encoder_conf.input_layer={conf['input_layer']!r} is not supported by the "
            "pruning encoders (use conv2d, conv2d1, conv2d2, conv2d6, conv2d8 or linear)"
        )
