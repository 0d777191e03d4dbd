"""MACs counted by torch (``FlopCounterMode``): the cross-check of the exact cost model.

MACs = FLOPs / 2. :func:`count_encoder_macs` counts one encoder forward,
:func:`count_decoder_macs` the decoder as the fast decoder runs it.
"""

from __future__ import annotations

from typing import Dict

import torch
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

from espnet_prune.pruned_decoder import PrunedTransformerDecoder


def count_encoder_macs(encoder: torch.nn.Module, input_size: int, frames: int) -> int:
    """MACs of one encoder forward on ``frames`` frames, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    encoder.eval()
    x = torch.randn(1, frames, input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(x, torch.tensor([frames]))
    return counter.get_total_flops() // 2


def count_decoder_macs(
    decoder: TransformerDecoder, prefix_len: int, memory_frames: int, seed: int = 0
) -> Dict[str, int]:
    """MACs of the decoder as :class:`PrunedTransformerDecoder` runs it, counted by torch.

    ``memory_macs``: projecting a ``(memory_frames, d)`` memory; ``token_macs``: one
    :meth:`~PrunedTransformerDecoder.score` step of one hypothesis at prefix length
    ``prefix_len`` with the memory already projected. An ESPnet ``TransformerDecoder`` is
    converted first. Uses ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2).
    """
    from torch.utils.flop_counter import FlopCounterMode

    dec = decoder if isinstance(decoder, PrunedTransformerDecoder) else \
        PrunedTransformerDecoder.from_transformer_decoder(decoder)
    was_training, espnet_path, fast = dec.training, dec._espnet_path, dec.use_fast_decoding
    dec.eval()
    dec._espnet_path, dec.use_fast_decoding = False, True  # count what the cost model describes
    param = next(dec.parameters())
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(memory_frames, dec.dims.attention_dim, generator=g).to(param)
    if dec.dims.input_layer == "embed":
        ys = torch.randint(0, dec.dims.vocab_size, (prefix_len,), generator=g).to(param.device)
    else:
        ys = torch.randn(prefix_len, dec.dims.vocab_size, generator=g).to(param)
    try:
        with torch.no_grad():
            dec.init_state(memory)
            with FlopCounterMode(display=False) as counter:
                dec.memory_kv(memory.unsqueeze(0))
            memory_macs = counter.get_total_flops() // 2
            state = None
            for t in range(1, prefix_len):
                _, state = dec.score(ys[:t], state, memory)
            with FlopCounterMode(display=False) as counter:
                dec.score(ys, state, memory)
            token_macs = counter.get_total_flops() // 2
            dec.clear_memory_cache()
    finally:
        dec.train(was_training)
        dec._espnet_path, dec.use_fast_decoding = espnet_path, fast
    return {"token_macs": int(token_macs), "memory_macs": int(memory_macs)}
