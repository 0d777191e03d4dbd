"""Pruning model (ESPnet ``model: prune_espnet``): gated student + frozen teacher + sparsity control.

Loss (DESIGN 2.3)::

    L = asr_weight * L_asr + pred_weight * L_pred + layer_weight * L_layer + L_sparsity

``L_sparsity`` holds the expected sparsity ``s`` of the chosen cost (``target: {params: x}``
for the parameters of the whole model, ``{macs: x}`` for the MACs of one inference at
``cost_seconds`` of audio; the scoped kinds are listed in :mod:`espnet_prune.targets`) at
the ramped target: the Lagrangian of one target, or nothing for a family of sizes, whose
gates are shifted to meet each member's target (:mod:`espnet_prune.control`).

In eval mode (validation, ``eval_sparsity``, shrinking) every gated part keeps the
structure that the exact-target rule (:mod:`espnet_prune.budget`) picks for the
final target.

The teacher is loaded from ``teacher_config`` / ``teacher_model_file``, frozen,
kept in eval mode and moved with the student, but is not a registered
submodule: it is absent from ``state_dict()``, ``parameters()``, the optimizers
and DDP.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from espnet2.asr.espnet_model import ESPnetASRModel
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask, th_accuracy
from espnet.nets.pytorch_backend.transformer.add_sos_eos import add_sos_eos
from espnet2.torch_utils.device_funcs import force_gatherable

from espnet_prune.distill import LayerDistiller, kl_divergence
from espnet_prune.encoder import GatedConformerEncoder
from espnet_prune.control import SparsityControl
from espnet_prune.cost.latency import LatencyTable
from espnet_prune.target_kinds import middle_target, parse_target, parse_targets
from espnet_prune.targets import CostContext

Tensor = torch.Tensor

@contextlib.contextmanager
def block_outputs(encoder: torch.nn.Module) -> Iterator[List[Tensor]]:
    """Collect the output ``(B, T, d)`` of every encoder block during a forward."""
    outputs: List[Tensor] = []

    def hook(_module, _inputs, output):
        x = output[0]
        outputs.append(x[0] if isinstance(x, tuple) else x)

    handles = [b.register_forward_hook(hook) for b in encoder.encoders]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


class PruningState(torch.nn.Module):
    """Training-only state saved with the student: layer map, step counter and,
    when pruning, the start of the target ramp and (one target) the Lagrange multipliers
    (with ``model_conf.bound``, also the bound's)."""

    def __init__(self, distiller: LayerDistiller, pruning: bool, lagrangian: bool,
                 bound: bool = False) -> None:
        super().__init__()
        self.distiller = distiller
        if lagrangian:
            self.lambda1 = torch.nn.Parameter(torch.zeros(()))
            self.lambda2 = torch.nn.Parameter(torch.zeros(()))
        if bound:  # the multiplier of model_conf.bound
            self.lambda_bound = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        if pruning:
            # expected sparsity at the first update, where the target ramp starts (-1: not yet)
            self.register_buffer("ramp_start", torch.full((), -1.0))
        if lagrangian:
            # largest (expected - ramped target) seen in training
            self.register_buffer("max_overshoot", torch.zeros(()))

    def espnet_initialization_fn(self) -> None:
        with torch.no_grad():
            for p in self.parameters(recurse=False):
                p.zero_()
            if hasattr(self, "ramp_start"):
                self.ramp_start.fill_(-1.0)
            if hasattr(self, "max_overshoot"):
                self.max_overshoot.zero_()


class ESPnetPruneASRModel(ESPnetASRModel):
    """ESPnet CTC/attention model pruned (front end, encoder blocks, decoder) under distillation.

    Two modes, chosen by the encoder:

    * ``gated_conformer``: pruning. The student starts as a copy of the teacher
      and the Lagrangian drives the gates to ``target``; with a list of sparsities
      (``{params: [0.3, 0.5, 0.7]}``) a family of nested sizes trains at once, each
      forward one member at its shift of the gates (:mod:`espnet_prune.family`, no
      Lagrangian).
    * ``pruned_conformer`` (or any Conformer): distillation only, e.g. to
      fine-tune a shrunk model (``target`` must be unset; initialise the student
      with ``--init_param``).

    Args (``model_conf`` keys on top of ``ESPnetASRModel``'s):
        teacher_config / teacher_model_file: the dense teacher (ESPnet config.yaml + .pth).
        target: ``{kind: x}``, sparsity in [0, 1) of the cost ``kind`` names
            (:mod:`espnet_prune.targets`: ``params`` is the whole model), or ``{kind: [x, ...]}``
            for a family; required when pruning. Eval mode (validation) uses the middle target.
        target_warmup_steps: training forwards over which the target ramps up from 0.
        asr_weight / pred_weight / layer_weight: loss weights.
        temperature: softmax temperature of the prediction-layer KL.
        distill_layers: 1-based teacher blocks matched by ``L_layer`` (default: every
            third block, and the last one).
        layer_mapping: ``dynamic`` (CoFi) or ``fixed``.
        bound: ``{kind: x}``, a second cost held at sparsity *at least* x while the target
            holds the first (one target only): e.g. ``{decode: 0.45}`` with
            ``target: {params: 0.5}`` prunes half the parameters so that a decode takes
            at most 0.55 of the dense model's time. Its multiplier pushes only while the
            expected sparsity is below the (ramped) bound; the eval structure is the
            target's.
        bound_p_gain: proportional gain of the bound's term (default: ``sparsity_p_gain``).
        latency_table: YAML file (or mapping) of the latency table that prices the
            ``decode`` cost (:mod:`espnet_prune.cost.latency`); needed for ``decode``.
        cost_seconds / cost_frames_per_second / cost_tokens: reference input of the MACs
            and ``decode`` costs (audio seconds, frames per second, decoder steps).
        sparsity_p_gain: ``k_p`` of the fixed proportional term ``k_p / 2 * (s - t)^2``
            added to the Lagrangian. With it the multipliers act as the integral
            term of a PI controller of the sparsity: the gates follow the ramp
            without the windup and overshoot of pure gradient-ascent multipliers
            (tests/test_prune_training.py bounds the overshoot).
        family_fixed_after: a family's training forwards after which its gates freeze and
            each forward trains one member's structure as it will be shrunk
            (:mod:`espnet_prune.control`); None: the gates train to the end.
    """

    def __init__(
        self,
        *args: Any,
        teacher_config: Optional[str] = None,
        teacher_model_file: Optional[str] = None,
        target: Optional[Dict[str, float]] = None,
        target_warmup_steps: int = 0,
        asr_weight: float = 1.0,
        pred_weight: float = 1.0,
        layer_weight: float = 1.0,
        temperature: float = 1.0,
        distill_layers: Optional[List[int]] = None,
        layer_mapping: str = "dynamic",
        cost_seconds: float = 10.0,
        cost_frames_per_second: float = 100.0,
        cost_tokens: int = 40,
        sparsity_p_gain: float = 1000.0,
        family_fixed_after: Optional[int] = None,
        bound: Optional[Dict[str, float]] = None,
        bound_p_gain: Optional[float] = None,
        latency_table: Optional[Any] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not hasattr(self.encoder, "dims"):
            raise ValueError(
                "model: prune_espnet needs encoder: gated_conformer (pruning) or "
                f"pruned_conformer (distillation), got {type(self.encoder).__name__}"
            )
        if self.preencoder is not None or self.postencoder is not None:
            raise ValueError("model: prune_espnet does not support a preencoder/postencoder")
        self.pruning_mode = isinstance(self.encoder, GatedConformerEncoder)
        self.family_targets: List[float] = []
        if self.pruning_mode:
            if target is None:
                raise ValueError("model_conf.target is required with encoder: gated_conformer")
            self.target_kind, self.family_targets = parse_targets(target)
            self.target = middle_target(self.family_targets)
        elif target is not None:
            raise ValueError(
                "model_conf.target is only for pruning (encoder: gated_conformer); "
                f"this model distils into a {type(self.encoder).__name__}"
            )
        if int(target_warmup_steps) < 0:
            raise ValueError(f"model_conf.target_warmup_steps={target_warmup_steps} must be >= 0")
        if temperature <= 0:
            raise ValueError(f"model_conf.temperature={temperature} must be > 0")
        if sparsity_p_gain < 0:
            raise ValueError(f"model_conf.sparsity_p_gain={sparsity_p_gain} must be >= 0")
        self.sparsity_p_gain = float(sparsity_p_gain)
        if bound_p_gain is not None and float(bound_p_gain) < 0:
            raise ValueError(f"model_conf.bound_p_gain={bound_p_gain} must be >= 0")
        self.target_warmup_steps = int(target_warmup_steps)
        if family_fixed_after is not None and (int(family_fixed_after) < 0 or len(self.family_targets) < 2):
            raise ValueError(f"model_conf.family_fixed_after={family_fixed_after}: a number of training "
                             "forwards >= 0, for a family target ({kind: [x1, x2, ...]}) only")
        self.asr_weight, self.pred_weight, self.layer_weight = asr_weight, pred_weight, layer_weight
        self.temperature = float(temperature)
        if int(cost_tokens) < 1:
            raise ValueError(f"model_conf.cost_tokens={cost_tokens} must be >= 1")
        latency = None if latency_table is None else LatencyTable.from_conf(latency_table)
        self.cost_ctx = CostContext(float(cost_seconds), float(cost_frames_per_second),
                                    int(cost_tokens), latency=latency)
        self.bound = None
        if bound is not None:
            if not self.pruning_mode or len(self.family_targets) > 1:
                raise ValueError("model_conf.bound needs pruning with one target "
                                 "(encoder: gated_conformer, target: {kind: x})")
            self.bound = parse_target(bound, "model_conf.bound")
        dims = self.encoder.dims
        if distill_layers is None:
            n = dims.num_blocks
            distill_layers = sorted(set(list(range(3, n + 1, 3)) + [n]))
        is_family = len(self.family_targets) > 1
        self.pruning = PruningState(
            LayerDistiller(dims.output_size, distill_layers, dims.num_blocks, layer_mapping),
            pruning=self.pruning_mode, lagrangian=self.pruning_mode and not is_family,
            bound=self.bound is not None,
        )
        object.__setattr__(self, "teacher", load_teacher(teacher_config, teacher_model_file))
        object.__setattr__(self, "control", None)
        object.__setattr__(self, "family", None)
        if self.pruning_mode:
            check_teacher_matches(self.teacher, self)
            self.init_from_teacher()
            control = SparsityControl(self, self.target_kind, self.family_targets, self.cost_ctx,
                                      self.target_warmup_steps, self.sparsity_p_gain,
                                      None if family_fixed_after is None else int(family_fixed_after),
                                      bound=self.bound, bound_p_gain=bound_p_gain)
            object.__setattr__(self, "control", control)
            object.__setattr__(self, "selector", control.selector)
            object.__setattr__(self, "family", control.family)
        else:
            check_teacher_compatible(self.teacher, self, layerwise=bool(self.pruning.distiller.teacher_layers))

    # -- teacher handling --------------------------------------------------

    def init_from_teacher(self) -> None:
        """Copy every teacher weight into the student (gates and pruning state keep theirs)."""
        if not self.pruning_mode:
            return
        own = self.state_dict()
        state = dict(own)
        state.update({k: v for k, v in self.teacher.state_dict().items()})
        self.load_state_dict(state, strict=True)

    def _apply(self, fn, *args, **kwargs):  # moves the teacher with .to() / .cuda() / .half()
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    # -- sparsity ----------------------------------------------------------

    def eval_sparsity(self) -> float:
        """Sparsity of the deterministic (eval-mode) structure: what shrinking would give
        (a family: its middle member)."""
        return self.control.eval_sparsity()

    # -- forward -------------------------------------------------------------

    def forward(
        self,
        speech: Tensor,
        speech_lengths: Tensor,
        text: Tensor,
        text_lengths: Tensor,
        **kwargs: Any,
    ) -> Tuple[Tensor, Dict[str, Tensor], Tensor]:
        batch_size = speech.shape[0]
        member = self.control.before(self.training) if self.pruning_mode else None
        text[text == -1] = self.ignore_id
        text = text[:, : text_lengths.max()]

        # Student and teacher see the same (augmented) features.
        feats, feats_lengths = self._extract_feats(speech, speech_lengths)
        if self.specaug is not None and self.training:
            feats, feats_lengths = self.specaug(feats, feats_lengths)
        teacher = self.teacher
        with torch.no_grad():  # ESPnet's normalizers may work in place: give the teacher a copy
            t_feats, t_lens = feats.clone(), feats_lengths
            if teacher.normalize is not None:
                t_feats, t_lens = teacher.normalize(t_feats, t_lens)
            with block_outputs(teacher.encoder) as t_hidden:
                t_enc, t_enc_lens, _ = teacher.encoder(t_feats, t_lens)
        s_feats, s_lens = feats, feats_lengths
        if self.normalize is not None:
            s_feats, s_lens = self.normalize(s_feats, s_lens)
        with block_outputs(self.encoder) as s_hidden:
            enc, enc_lens, _ = self.encoder(s_feats, s_lens)
        frame_mask = ~make_pad_mask(enc_lens, maxlen=enc.size(1)).to(enc.device)
        stats: Dict[str, Any] = {}

        # 1. ASR loss and prediction-layer distillation (CTC + attention decoder)
        ctc_w = self.ctc_weight
        loss_asr = enc.new_zeros(())
        loss_pred = enc.new_zeros(())
        if ctc_w > 0.0:
            loss_ctc, cer_ctc = self._calc_ctc_loss(enc, enc_lens, text, text_lengths)
            with torch.no_grad():
                t_ctc = teacher.ctc.ctc_lo(t_enc)
            kl_ctc = kl_divergence(self.ctc.ctc_lo(enc), t_ctc, frame_mask, self.temperature)
            loss_asr = loss_asr + ctc_w * loss_ctc
            loss_pred = loss_pred + ctc_w * kl_ctc
            stats.update(loss_ctc=loss_ctc.detach(), kl_ctc=kl_ctc.detach(), cer_ctc=cer_ctc)
        if ctc_w < 1.0 and self.decoder is not None:
            ys_in, ys_out = add_sos_eos(text, self.sos, self.eos, self.ignore_id)
            ys_in_lens = text_lengths + 1
            dec, _ = self.decoder(enc, enc_lens, ys_in, ys_in_lens)
            with torch.no_grad():
                t_dec, _ = teacher.decoder(t_enc, t_enc_lens, ys_in, ys_in_lens)
            loss_att = self.criterion_att(dec, ys_out)
            kl_att = kl_divergence(dec, t_dec, ys_out != self.ignore_id, self.temperature)
            acc = th_accuracy(dec.view(-1, self.vocab_size), ys_out, ignore_label=self.ignore_id)
            loss_asr = loss_asr + (1.0 - ctc_w) * loss_att
            loss_pred = loss_pred + (1.0 - ctc_w) * kl_att
            stats.update(loss_att=loss_att.detach(), kl_att=kl_att.detach(), acc=acc)

        # 2. Layerwise distillation
        loss_layer, matched = self.pruning.distiller(s_hidden, t_hidden, frame_mask)

        # 3. Sparsity: the Lagrangian of one target, or a family's shift (no penalty)
        loss = (
            self.asr_weight * loss_asr
            + self.pred_weight * loss_pred
            + self.layer_weight * loss_layer
        )
        if self.training:
            self.pruning.num_updates += 1
        if self.pruning_mode:
            loss_sparsity, sparsity_stats = self.control.after(member, self.training)
            loss = loss + loss_sparsity
            stats.update(sparsity_stats)
        stats.update(
            loss=loss.detach(),
            loss_asr=loss_asr.detach(),
            loss_pred=loss_pred.detach(),
            loss_layer=loss_layer.detach(),
        )
        for i, s in enumerate(matched):
            stats[f"matched_layer{self.pruning.distiller.teacher_layers[i]}"] = torch.tensor(float(s))
        loss, stats, weight = force_gatherable((loss, stats, batch_size), loss.device)
        return loss, stats, weight


def load_teacher(config: Optional[str], model_file: Optional[str]) -> ESPnetASRModel:
    """Build the frozen teacher, with errors naming the ``model_conf`` key."""
    from espnet_prune.model_io import build_asr_model

    for key, value in (("teacher_config", config), ("teacher_model_file", model_file)):
        if not value:
            raise ValueError(f"model_conf.{key} is required for model: prune_espnet")
        if not Path(value).is_file():
            raise FileNotFoundError(f"model_conf.{key}: file not found: {value}")
    try:
        teacher, _ = build_asr_model(config, model_file)
    except Exception as e:  # unreadable or mismatched checkpoint
        raise ValueError(
            f"model_conf.teacher_model_file: cannot load {model_file} with {config}: {e}"
        ) from e
    if isinstance(teacher, ESPnetPruneASRModel):
        raise ValueError("model_conf.teacher_config: the teacher must be a dense model")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def check_teacher_matches(teacher: torch.nn.Module, student: torch.nn.Module) -> None:
    """Every teacher weight must exist in the student with the same shape, and vice versa."""
    t = {k: v.shape for k, v in teacher.state_dict().items()}
    s = {
        k: v.shape
        for k, v in student.state_dict().items()
        if ".gates." not in k and not k.startswith("pruning.")
    }
    problems = [f"{k}: teacher {tuple(t[k])} vs student {tuple(s[k])}" for k in t if k in s and t[k] != s[k]]
    problems += [f"{k}: only in the teacher" for k in t if k not in s]
    problems += [f"{k}: only in the student" for k in s if k not in t]
    if problems:
        raise ValueError(
            "model_conf.teacher_config: the teacher's architecture does not match the "
            f"student's dense shape ({len(problems)} differences), e.g. " + "; ".join(problems[:5])
        )


def check_teacher_compatible(teacher: torch.nn.Module, student: ESPnetASRModel, layerwise: bool = True) -> None:
    """Distillation-only mode: same hidden size and vocabulary, and the same block count
    when blocks are matched (``layerwise``; without ``distill_layers`` a shallower student,
    e.g. the ``layerdrop`` baseline, is distilled at the prediction layer only)."""
    t_dims, s_dims = getattr(teacher.encoder, "dims", None), student.encoder.dims
    if t_dims is None:
        from espnet_prune.structure import ConformerDims

        t_dims = ConformerDims(
            input_size=s_dims.input_size,
            output_size=teacher.encoder.output_size(),
            num_blocks=len(teacher.encoder.encoders),
        )
    problems = []
    if t_dims.output_size != s_dims.output_size:
        problems.append(f"output_size {t_dims.output_size} vs {s_dims.output_size}")
    if layerwise and t_dims.num_blocks != s_dims.num_blocks:
        problems.append(f"num_blocks {t_dims.num_blocks} vs {s_dims.num_blocks}")
    if teacher.vocab_size != student.vocab_size:
        problems.append(f"vocab_size {teacher.vocab_size} vs {student.vocab_size}")
    if problems:
        raise ValueError(
            "model_conf.teacher_config: teacher and student cannot be distilled: " + "; ".join(problems)
        )


_ESPNET_MODEL_KEYS = set(inspect.signature(ESPnetASRModel.__init__).parameters)


def eval_target_from_args(args: argparse.Namespace) -> Optional[Tuple[str, float, CostContext]]:
    """(target kind, target sparsity, cost context) of a pruning run's training args,
    for :func:`espnet_prune.targets.build_selector` (a family: its middle target, see
    :func:`family_targets_from_args`); None when the args are not a pruning run's."""
    conf = getattr(args, "model_conf", None) or {}
    if getattr(args, "model", None) != "prune_espnet" or conf.get("target") is None:
        return None
    kind, values = parse_targets(conf["target"])
    ctx = CostContext(
        float(conf.get("cost_seconds", 10.0)),
        float(conf.get("cost_frames_per_second", 100.0)),
        int(conf.get("cost_tokens", 40)),
    )
    return kind, middle_target(values), ctx


def family_targets_from_args(args: argparse.Namespace) -> List[float]:
    """The sparsities of a family pruning run's members (increasing); [] for any other run."""
    conf = getattr(args, "model_conf", None) or {}
    if getattr(args, "model", None) != "prune_espnet" or conf.get("target") is None:
        return []
    values = parse_targets(conf["target"])[1]
    return values if len(values) > 1 else []


def plain_asr_args(args: argparse.Namespace) -> argparse.Namespace:
    """Training args of a ``prune_espnet`` model rewritten as a plain ``espnet`` model."""
    import copy

    out = copy.deepcopy(args)
    if getattr(out, "model", None) == "prune_espnet":
        out.model = "espnet"
        out.model_conf = {k: v for k, v in (out.model_conf or {}).items() if k in _ESPNET_MODEL_KEYS}
    return out
