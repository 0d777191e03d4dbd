"""What a decode costs in seconds: the ``decode`` metric, priced by a latency table.

MACs do not say what a beam-search decode costs on a CPU. The decoder runs once per
output step for the whole beam (its small matrix products cost their weights' memory
traffic and their call overhead, not their arithmetic), every kept module costs a fixed
overhead per call (a decoder self-attention, which gathers and extends the prefix's keys
and values, costs more than an FFN), and the CTC prefix scoring and the search's
bookkeeping cost the same whatever the model. The ``decode`` metric is one decode of the
reference utterance (:class:`~espnet_prune.targets.CostContext`: ``seconds`` of audio,
``tokens`` output steps), affine in the structure::

    seconds = frontend_mac_s * front-end MACs + encoder_mac_s * block MACs
            + sum over encoder modules m of encoder_module_s[kind(m)]
            + decoder_mac_s * decoder MACs (one hypothesis, ``tokens`` steps)
            + tokens * sum over decoder sublayers l of decoder_sublayer_s[kind(l)]
            + step_s * tokens + utterance_s

over the kept modules: the ``ffn1`` / ``mha`` / ``conv`` / ``ffn2`` modules of the
Conformer blocks and the ``self_attn`` / ``src_attn`` / ``ffn`` sublayers of the decoder
layers (MACs as in :mod:`.encoder` and :mod:`.decoder`). The coefficients are a
:class:`LatencyTable`, measured once per machine, beam and thread count by ``python -m
espnet_prune.bin.latency`` (which also prints its predictions against measured decodes of
other structures). Every gated part's groups in ``macs`` become ``decode`` groups by
:func:`decode_groups`: the same units, their MACs priced, and a module's call overhead
added to its fixed cost (paid while it keeps a unit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Tuple, Union

from espnet_prune.budget import UnitGroup

#: module kinds whose call overhead a table prices, per part
ENCODER_MODULES = ("ffn1", "mha", "conv", "ffn2")
DECODER_SUBLAYERS = ("self_attn", "src_attn", "ffn")
#: the scalar coefficients of a table, in seconds
SCALARS = ("frontend_mac_s", "encoder_mac_s", "decoder_mac_s", "step_s", "utterance_s")


@dataclass(frozen=True)
class LatencyTable:
    """Seconds of one decode, per unit of each structural quantity (see the module docstring).

    Attributes:
        frontend_mac_s: s per MAC of the subsampling front end (its convolutions and output
            Linear, one utterance): an encoder's MACs that no gate removes are counted here.
        encoder_mac_s: s per MAC of the Conformer blocks (one utterance).
        encoder_module_s: per module kind (:data:`ENCODER_MODULES`), s per kept module and
            utterance.
        decoder_mac_s: s per decoder MAC of one hypothesis (the beam runs batched).
        decoder_sublayer_s: per sublayer kind (:data:`DECODER_SUBLAYERS`), s per kept
            sublayer and output step.
        step_s: s per output step that no prunable module carries (CTC prefix scoring,
            search bookkeeping, embedding and output layer).
        utterance_s: s per utterance that no prunable module carries.
        beam, threads: the beam size and torch threads it was measured with.
        seconds, steps: the utterance it was measured on (audio seconds, decoder steps;
            0: not recorded); a target or bound is priced there.
        machine: where it was measured (CPU model), for the record.
    """

    frontend_mac_s: float
    encoder_mac_s: float
    encoder_module_s: Mapping[str, float]
    decoder_mac_s: float
    decoder_sublayer_s: Mapping[str, float]
    step_s: float
    utterance_s: float
    beam: int
    threads: int = 1
    seconds: float = 0.0
    steps: int = 0
    machine: str = ""

    def __post_init__(self) -> None:
        for name in SCALARS:
            _check(name, getattr(self, name))
        for name, kinds in (("encoder_module_s", ENCODER_MODULES), ("decoder_sublayer_s", DECODER_SUBLAYERS)):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or sorted(value) != sorted(kinds):
                raise ValueError(f"{name} must map each of {list(kinds)} to seconds, got {value!r}")
            for kind, v in value.items():
                _check(f"{name}.{kind}", v)
            object.__setattr__(self, name, dict(value))

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
            raise ValueError(f"{source}: expected a mapping of latency coefficients, got {conf!r}")
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

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def module_s(self, part: str, kind: str, steps: int) -> float:
        """Call overhead of one kept module of ``kind`` in the part named ``part``
        (``encoder`` or ``decoder``) over one utterance of ``steps`` decoder steps (s)."""
        if part == "decoder":
            return self.decoder_sublayer_s[kind] * steps
        return self.encoder_module_s[kind]


def _check(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name}={value!r} must be a number >= 0")


def decode_groups(part: str, groups: Iterable[UnitGroup], constant: float,
                  modules: Iterable[Tuple[int, str]], table: LatencyTable,
                  steps: int) -> Tuple[List[UnitGroup], float]:
    """A part's ``macs`` groups and constant (one utterance, ``steps`` decoder steps) in
    ``decode`` seconds.

    Args:
        part: ``encoder`` or ``decoder`` (which coefficients apply).
        groups, constant: the part's ``unit_groups("macs", ...)``.
        modules: keys ``(block, kind)`` / ``(layer, kind)`` of the part's modules; a group
            with such a key is that module, and pays its call overhead while it keeps a
            unit; a module without a group (no gate) pays it in the constant.

    Encoder groups keyed ``("frontend", i)`` and the encoder's constant are front-end MACs
    (every block module of a pruning model is gated; an ungated one's MACs would be priced
    as the front end's).
    """
    modules = set(modules)
    out = []
    for g in groups:
        mac_s = table.decoder_mac_s if part == "decoder" else (
            table.frontend_mac_s if g.key[0] == "frontend" else table.encoder_mac_s)
        fixed = g.fixed_cost * mac_s
        if g.key in modules:
            fixed += table.module_s(part, g.key[1], steps)
        out.append(UnitGroup(g.key, g.scores, g.unit_cost * mac_s, fixed,
                             {k: c * mac_s for k, c in g.pair_costs.items()}, g.presence))
    ungated = modules - {g.key for g in groups}
    # what no gate removes: the decoder's output layer, the encoder's front end
    constant_s = table.decoder_mac_s if part == "decoder" else table.frontend_mac_s
    return out, constant * constant_s + sum(table.module_s(part, key[1], steps) for key in ungated)


def search_seconds(table: LatencyTable, steps: int) -> float:
    """The decode's seconds that no prunable module carries (``step_s``, ``utterance_s``)."""
    return table.step_s * steps + table.utterance_s


def decode_seconds(table: LatencyTable, frontend_macs: float, block_macs: float,
                   encoder_modules: Mapping[str, int], decoder_macs: float,
                   decoder_sublayers: Mapping[str, int], steps: int) -> float:
    """The table's prediction of one decode (the formula of the module docstring), from the
    MACs and the kept modules and sublayers counted per kind."""
    return (table.frontend_mac_s * frontend_macs + table.encoder_mac_s * block_macs
            + sum(table.module_s("encoder", k, steps) * n for k, n in encoder_modules.items())
            + table.decoder_mac_s * decoder_macs
            + sum(table.module_s("decoder", k, steps) * n for k, n in decoder_sublayers.items())
            + search_seconds(table, steps))
