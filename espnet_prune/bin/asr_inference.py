"""ESPnet's ``asr_inference`` with the espnet_prune classes registered and the fast decoder.

Accepts every argument of ``python -m espnet2.bin.asr_inference``, plus one::

    python -m espnet_prune.bin.asr_inference --asr_train_config exp/x/config.yaml \
        --asr_model_file exp/x/model.pth --data_path_and_name_and_type dump/test/wav.scp,speech,sound \
        --output_dir exp/x/decode_test [--fast_decoder true]

``--fast_decoder true`` (the default) decodes a model whose decoder is ESPnet's
``transformer`` with :class:`espnet_prune.pruned_decoder.PrunedTransformerDecoder`: same weights
(loaded with every key checked), same scores and hypotheses, but the source-attention keys
and values of the encoder output are computed once per utterance and the self-attention
keys and values of the prefix are kept between steps; CTC prefixes are scored by
:class:`espnet_prune.ctc_prefix.FastCTCPrefixScorer` (same scores, no Python loop over
frames). Models with another decoder (or a quantized one) are decoded by ESPnet's own
decoder code, with a warning (CTC still scored fast). ``--quantize_asr_model true`` (ESPnet's
dynamic int8) works with it: the model is quantized after the swap, with ESPnet's call and
options (int8 results differ from ESPnet's int8 decode in rounding: the fast decoder feeds
its linears one new token instead of the whole prefix, and dynamic quantization scales by
each input's range). ``--fast_decoder false`` is ESPnet's decoding unchanged. The option may
also be set in the ``--config`` YAML.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, List, Optional

import espnet_prune


def get_parser() -> argparse.ArgumentParser:
    """ESPnet's ``asr_inference`` parser plus ``--fast_decoder``."""
    from espnet2.bin import asr_inference
    from espnet2.utils.types import str2bool

    parser = asr_inference.get_parser()
    group = parser.add_argument_group("espnet_prune")
    group.add_argument(
        "--fast_decoder", type=str2bool, default=True,
        help="decode a 'transformer' decoder with espnet_prune's pruned_transformer class "
             "(identical results; encoder keys/values projected once per utterance)",
    )
    return parser


def fast_speech2text_class(base: type) -> type:
    """Subclass of ESPnet's ``Speech2Text`` that switches to the fast decoder when built."""

    class FastDecoderSpeech2Text(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # int8: quantized after the decoder swap (a quantized ESPnet decoder cannot be
            # converted), with ESPnet's own call and options
            quantize = bool(kwargs.get("quantize_asr_model", False))
            super().__init__(*args, **dict(kwargs, quantize_asr_model=False))
            fast = espnet_prune.fast_decoding(self, require=False)
            if quantize:
                from espnet_prune.inference import quantize_dynamic

                quantize_dynamic(self.asr_model, kwargs.get("quantize_modules", ["Linear"]),
                                 kwargs.get("quantize_dtype", "qint8"))
            if fast:
                logging.info("fast decoder: pruned_transformer (espnet_prune)")
            else:
                logging.warning(
                    "fast decoder not used: the model's decoder is %s, not a plain ESPnet "
                    "TransformerDecoder decoded by BeamSearch; decoding with ESPnet's decoder "
                    "code (CTC prefixes scored by espnet_prune)",
                    type(self.asr_model.decoder).__name__,
                )

    FastDecoderSpeech2Text.__name__ = base.__name__
    FastDecoderSpeech2Text.__qualname__ = base.__qualname__
    return FastDecoderSpeech2Text


def main(cmd: Optional[List[str]] = None) -> None:
    espnet_prune.register()
    from espnet.utils.cli_utils import get_commandline_args
    from espnet2.bin import asr_inference

    print(get_commandline_args(), file=sys.stderr)
    args = get_parser().parse_args(cmd)
    kwargs = vars(args)
    kwargs.pop("config", None)
    fast = kwargs.pop("fast_decoder")
    if not fast:
        asr_inference.inference(**kwargs)
        return
    original = asr_inference.Speech2Text
    asr_inference.Speech2Text = fast_speech2text_class(original)
    try:
        asr_inference.inference(**kwargs)
    finally:
        asr_inference.Speech2Text = original


if __name__ == "__main__":
    main()
