"""What a (pruned) Conformer looks like: dense dimensions and per-block structure.

:class:`ConformerDims` holds the dense encoder's hyper-parameters (the ones the
cost model and the shrinker need), read from ESPnet ``encoder_conf`` options.
:class:`BlockStructure` says how much of one block is left: heads, FFN units and
conv channels kept, where 0 means the whole module is gone.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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
