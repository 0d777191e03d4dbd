"""Print the size and the encoder and decoder compute of an ASR model as one JSON object.

    python -m espnet_prune.bin.profile --asr_train_config conf/train_asr_conformer.yaml --seconds 10
    python -m espnet_prune.bin.profile --asr_train_config exp/x/config.yaml --asr_model_file exp/x/model.pth

``--asr_train_config`` may be a training recipe config (no ``token_list``:
``--vocab_size`` tokens are assumed) or the ``config.yaml`` ESPnet saves with a
model. Params are counted on the built model; encoder MACs come from the exact
cost model (:mod:`espnet_prune.cost`) and are cross-checked by
``torch.utils.flop_counter`` on a dummy input (``macs_counted``).

Transformer decoders (ESPnet ``transformer`` or ``pruned_transformer``) get a ``decoder``
section with the exact cost of :func:`espnet_prune.cost.decoder_cost`, as the fast
decoder runs it: ``token_macs`` is one decoding step of one hypothesis at prefix length
``--prefix_len`` against the encoder output of ``--seconds`` of audio, without the
source-attention key/value projections of that output (``memory_macs``, once per
utterance); ``utterance_macs`` is one hypothesis decoded for ``--tokens`` tokens
(memory projections included). ``token_macs_counted`` / ``memory_macs_counted`` are torch's
FLOP counter on the real decoder.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional, Tuple

import torch

from espnet_prune.cost import structure_cost
from espnet_prune.flops import count_encoder_macs
from espnet_prune.model_io import load_train_args, param_breakdown
from espnet_prune.structure import BlockStructure, ConformerDims


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_train_config", required=True)
    p.add_argument("--asr_model_file", default=None)
    p.add_argument("--seconds", type=float, default=10.0, help="audio length for MACs (s)")
    p.add_argument("--frames_per_second", type=float, default=None,
                   help="feature frames per second (default: fs / hop_length of the frontend, else 100)")
    p.add_argument("--vocab_size", type=int, default=5000,
                   help="token count when the config has no token_list")
    p.add_argument("--count_macs", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                   help="also count MACs with torch's FlopCounterMode")
    p.add_argument("--prefix_len", type=int, default=20,
                   help="decoder prefix length (tokens) of the per-token decoder MACs")
    p.add_argument("--tokens", type=int, default=40,
                   help="decoded tokens of the per-utterance decoder MACs")
    return p


def build_from_any_config(config: str, vocab_size: int) -> Tuple[torch.nn.Module, argparse.Namespace]:
    """Build an ESPnet ASR model from a saved or a recipe config."""
    import espnet_prune

    espnet_prune.register()
    from espnet2.tasks.asr import ASRTask

    saved = load_train_args(config)
    if getattr(saved, "token_list", None):
        args = saved
    else:
        args = ASRTask.get_parser().parse_args(
            ["--config", config, "--token_list", "none", "--output_dir", "unused"]
        )
        args.token_list = ["<blank>"] + [f"tok{i}" for i in range(vocab_size - 2)] + ["<sos/eos>"]
    return ASRTask.build_model(args), args


def encoder_dims_and_structure(
    model: torch.nn.Module, args: argparse.Namespace
) -> Tuple[ConformerDims, List[BlockStructure]]:
    """Dims and per-block structure of a conformer / gated / pruned encoder."""
    enc = model.encoder
    if hasattr(enc, "structure"):
        return enc.dims, enc.structure()
    input_size = model.frontend.output_size() if model.frontend is not None else args.input_size
    conf = {k: v for k, v in (args.encoder_conf or {}).items()}
    dims = ConformerDims.from_encoder_conf(input_size, conf)
    return dims, dims.dense_structure()


def frames_per_second(args: argparse.Namespace) -> float:
    """Feature frames per second of the model's frontend (fs / hop_length)."""
    conf = getattr(args, "frontend_conf", None) or {}
    fs = conf.get("fs", 16000)
    if isinstance(fs, str):
        fs = float(fs[:-1]) * 1000 if fs.lower().endswith("k") else float(fs)
    return float(fs) / conf.get("hop_length", 128)  # 128: DefaultFrontend's default


def decoder_profile(model: torch.nn.Module, args: argparse.Namespace, memory_frames: int,
                    prefix_len: int = 20, tokens: int = 40,
                    count_macs: bool = True) -> Optional[Dict[str, Any]]:
    """Params and MACs of a Transformer decoder as the fast decoder runs it (None otherwise)."""
    from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

    from espnet_prune.cost import decoder_cost
    from espnet_prune.flops import count_decoder_macs
    from espnet_prune.pruned_decoder import PrunedTransformerDecoder
    from espnet_prune.structure import DecoderDims

    dec = getattr(model, "decoder", None)
    if isinstance(dec, PrunedTransformerDecoder):
        dims, structure = dec.dims, dec.structure()
    elif type(dec) is TransformerDecoder:
        dims = DecoderDims.from_decoder_conf(
            dec.output_layer.out_features if dec.output_layer is not None
            else len(args.token_list), dec._output_size_bf_softmax, args.decoder_conf or {})
        structure = dims.dense_structure()
    else:
        return None
    cost = decoder_cost(dims, structure, prefix_len, memory_frames, tokens)
    dense = decoder_cost(dims, dims.dense_structure(), prefix_len, memory_frames, tokens)
    out: Dict[str, Any] = {
        "decoder": type(dec).__name__,
        "params": int(cost["params"]),
        "token_macs": int(cost["token_macs"]),
        "memory_macs": int(cost["memory_macs"]),
        "utterance_macs": int(cost["utterance_macs"]),
        "prefix_len": prefix_len,
        "memory_frames": memory_frames,
        "tokens": tokens,
        "params_sparsity": 1 - cost["params"] / dense["params"],
        "token_macs_sparsity": 1 - cost["token_macs"] / dense["token_macs"],
        "layer_structures": [s.to_dict() for s in structure],
    }
    if count_macs:
        counted = count_decoder_macs(dec, prefix_len, memory_frames)
        out["token_macs_counted"] = counted["token_macs"]
        out["memory_macs_counted"] = counted["memory_macs"]
    return out


def profile(model: torch.nn.Module, args: argparse.Namespace, seconds: float,
            fps: float, count_macs: bool = True, prefix_len: int = 20,
            tokens: int = 40) -> Dict[str, Any]:
    dims, structure = encoder_dims_and_structure(model, args)
    cost = structure_cost(dims, structure, seconds, fps)
    dense = structure_cost(dims.dense_dims(), dims.dense_structure(), seconds, fps)
    params = param_breakdown(model)
    gates = getattr(model.encoder, "gate_parameters", lambda: [])()
    params["gates"] = sum(p.numel() for p in gates)
    params["prunable"] = int(cost["block_params"])
    out: Dict[str, Any] = {
        "params": params,
        "encoder_macs": int(cost["macs"]),
        "encoder_macs_blocks": int(cost["block_macs"]),
        "seconds": seconds,
        "frames_per_second": fps,
        "block_params_sparsity": 1 - cost["block_params"] / dense["block_params"],
        "encoder_macs_sparsity": 1 - cost["macs"] / dense["macs"],
        "encoder": type(model.encoder).__name__,
        "block_structures": [s.to_dict() for s in structure],
    }
    if dims.subsampling_channels is not None:
        out["subsampling_channels"] = list(dims.subsampling_channels)
    if count_macs:
        out["macs_counted"] = count_encoder_macs(model.encoder, dims.input_size, int(round(seconds * fps)))
    from espnet_prune.cost import frames_after_frontend

    dec = decoder_profile(model, args, frames_after_frontend(dims, seconds, fps),
                          prefix_len, tokens, count_macs)
    if dec is not None:
        out["decoder"] = dec
    return out


def main(cmd: Optional[List[str]] = None) -> Dict[str, Any]:
    a = get_parser().parse_args(cmd)
    model, args = build_from_any_config(a.asr_train_config, a.vocab_size)
    if a.asr_model_file:
        from espnet_prune.shrink import load_strict

        state = torch.load(a.asr_model_file, map_location="cpu", weights_only=True)
        load_strict(model, state, what=a.asr_model_file)
    fps = a.frames_per_second or frames_per_second(args)
    result = profile(model, args, a.seconds, fps, a.count_macs, a.prefix_len, a.tokens)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
