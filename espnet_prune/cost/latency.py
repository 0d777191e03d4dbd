"""What a decode costs in seconds: the ``decode`` metric, priced by a latency table.

MACs do not say what a beam-search decode costs on a CPU. The decoder runs once per
output step for the whole beam (its small matrix products cost their weights' memory
traffic and their call overhead, not their arithmetic), every kept module costs a fixed
overhead per call, and the CTC prefix scoring and the search's bookkeeping cost the
same whatever the model. The ``decode`` metric is one decode of the reference utterance
(:class:`~espnet_prune.targets.CostContext`: ``seconds`` of audio, ``tokens`` output
steps), affine in the structure::

    seconds = encoder_mac_s * encoder MACs + encoder_module_s * kept encoder modules
            + decoder_mac_s * decoder MACs (one hypothesis, ``tokens`` steps)
            + decoder_sublayer_s * tokens * kept decoder sublayers
            + step_s * tokens + utterance_s

(a module is one ``ffn1`` / ``mha`` / ``conv`` / ``ffn2`` of a Conformer block or one
``self_attn`` / ``src_attn`` / ``ffn`` of a decoder layer; MACs as in :mod:`.encoder` and
:mod:`.decoder`). The coefficients are a :class:`LatencyTable`, measured once per machine,
beam and thread count by ``python -m espnet_prune.bin.latency`` (which also prints the
prediction against measured decodes of other structures). Every gated part's groups in
``macs`` become ``decode`` groups by :func:`decode_groups`: the same units, their MACs
priced, and a module's call overhead added to its fixed cost (paid while it keeps a unit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterable, List, Mapping, Tuple, Union

from espnet_prune.budget import UnitGroup

#: the coefficient fields of a table, in seconds
COEFFICIENTS = ("encoder_mac_s", "encoder_module_s", "decoder_mac_s", "decoder_sublayer_s",
                "step_s", "utterance_s")


@dataclass(frozen=True)
class LatencyTable:
    """Seconds of one decode, per unit of each structural quantity (see the module docstring).

    Attributes:
        encoder_mac_s: s per encoder MAC (front end and blocks, one utterance).
        encoder_module_s: s per kept encoder block module, per utterance.
        decoder_mac_s: s per decoder MAC of one hypothesis (the beam runs batched).
        decoder_sublayer_s: s per kept decoder sublayer per output step.
        step_s: s per output step that no prunable module carries (CTC prefix scoring,
            search bookkeeping, embedding and output layer).
        utterance_s: s per utterance that no prunable module carries (CTC posteriors, ...).
        beam, threads: the beam size and torch threads it was measured with.
        machine: where it was measured (CPU model), for the record.
    """

    encoder_mac_s: float
    encoder_module_s: float
    decoder_mac_s: float
    decoder_sublayer_s: float
    step_s: float
    utterance_s: float
    beam: int
    threads: int = 1
    machine: str = ""

    def __post_init__(self) -> None:
        for name in COEFFICIENTS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0")

    @classmethod
    def from_conf(cls, conf: Union[str, Path, Mapping[str, Any]]) -> "LatencyTable":
        """A table from a YAML file or a mapping; errors name the file and the key."""
        source = "latency table"
        if isinstance(conf, (str, Path)):
            import yaml

            source = str(conf)
            try:
                conf = yaml.safe_load(Path(conf).read_text())
            except OSError as e:
                raise ValueError(f"latency table {source}: cannot read it ({e})") from None
        if not isinstance(conf, Mapping):
            raise ValueError(f"{source}: expected a mapping of {list(COEFFICIENTS)}, got {conf!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(conf) - fields - {"fit"})
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in conf)
        if unknown or missing:
            raise ValueError(f"{source}: unknown keys {unknown}, missing keys {missing}")
        try:
            return cls(**{k: v for k, v in conf.items() if k in fields})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def overhead(table: LatencyTable, part: str, steps: int) -> Tuple[float, float]:
    """(s per MAC, s per kept module and utterance) of the gated part named ``part``."""
    if part == "decoder":
        return table.decoder_mac_s, table.decoder_sublayer_s * steps
    return table.encoder_mac_s, table.encoder_module_s


def decode_groups(part: str, groups: Iterable[UnitGroup], constant: float,
                  modules: Iterable[Hashable], table: LatencyTable,
                  steps: int) -> Tuple[List[UnitGroup], float]:
    """A part's ``macs`` groups and constant (one utterance, ``steps`` decoder steps) in
    ``decode`` seconds.

    Args:
        part: ``encoder`` or ``decoder`` (which coefficients apply).
        groups, constant: the part's ``unit_groups("macs", ...)``.
        modules: keys of the part's modules (``(block, module)`` / ``(layer, sublayer)``);
            a group with such a key is that module, and pays its call overhead while it
            keeps a unit; a module without a group (no gate) pays it in the constant.
    """
    mac_s, module_s = overhead(table, part, steps)
    modules = set(modules)
    out = []
    for g in groups:
        fixed = g.fixed_cost * mac_s + (module_s if g.key in modules else 0.0)
        out.append(UnitGroup(g.key, g.scores, g.unit_cost * mac_s, fixed,
                             {k: c * mac_s for k, c in g.pair_costs.items()}, g.presence))
    ungated = modules - {g.key for g in groups}
    return out, constant * mac_s + module_s * len(ungated)


def search_seconds(table: LatencyTable, steps: int) -> float:
    """The decode's seconds that no prunable module carries (``step_s``, ``utterance_s``)."""
    return table.step_s * steps + table.utterance_s


def decode_seconds(table: LatencyTable, encoder_macs: float, encoder_modules: int,
                   decoder_macs: float, decoder_sublayers: int, steps: int) -> float:
    """The table's prediction of one decode (the formula of the module docstring)."""
    return (table.encoder_mac_s * encoder_macs + table.encoder_module_s * encoder_modules
            + table.decoder_mac_s * decoder_macs
            + table.decoder_sublayer_s * steps * decoder_sublayers
            + search_seconds(table, steps))
