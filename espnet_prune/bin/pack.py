"""Pack a pruned (shrunk) ASR model into the archive ESPnet users share (``espnet2.bin.pack asr``).

    python -m espnet_prune.bin.pack --asr_train_config exp/mini/prune_params0.5/final/config.yaml \
        --asr_model_file exp/mini/prune_params0.5/final/model.pth \
        --outpath exp/mini/prune_params0.5/packed.zip [--option RESULTS.md ...]

The archive is ESPnet's own format (``meta.yaml`` + the files; ``.zip``, ``.tar``,
``.tgz``, ``.tar.gz``, ...), written by :func:`espnet2.main_funcs.pack_funcs.pack`. On top
of ``espnet2.bin.pack asr`` this wrapper

* adds the files the config points to and inference needs: ``bpemodel`` (token type
  ``bpe``), ``normalize_conf.stats_file`` (``global_mvn``) and a ``token_list`` given as a
  path, with an error naming the key when one is missing;
* refuses a training model (``model: prune_espnet``, which needs its teacher): shrink it
  first with ``python -m espnet_prune.bin.shrink``;
* loads the model with every key checked before packing (plugin classes registered);
* writes the archive under a temporary name and renames it into place.

Load the archive, after ``espnet_prune.register()``::

    from espnet2.bin.asr_inference import Speech2Text
    from espnet2.main_funcs.pack_funcs import unpack
    speech2text = Speech2Text.from_pretrained(**unpack("packed.zip", "unpacked"))

(or ``Speech2Text.from_pretrained("packed.zip")`` where ``espnet_model_zoo`` is installed).
Paths inside the archive are relative to the directory this command runs in, as with
ESPnet's ``pack``: run it from the recipe directory.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--asr_train_config", required=True, help="config.yaml of the shrunk (or any plain) model")
    p.add_argument("--asr_model_file", required=True, help="its weights (.pth)")
    p.add_argument("--outpath", required=True, help="archive to write (.zip, .tar, .tgz, .tar.gz, ...)")
    p.add_argument("--lm_train_config", default=None, help="optional language model config")
    p.add_argument("--lm_file", default=None, help="optional language model weights")
    p.add_argument("--option", action="append", default=[], help="any other file to include (repeatable)")
    return p


def referenced_files(config: Dict[str, Any], config_file: str) -> Dict[str, str]:
    """Files that building the model for inference reads, by config key.

    Raises:
        FileNotFoundError: naming the key and the path of a file that is missing.
    """
    refs: Dict[str, str] = {}
    if config.get("token_type") == "bpe" and config.get("bpemodel"):
        refs["bpemodel"] = config["bpemodel"]
    if config.get("normalize") == "global_mvn":
        stats = (config.get("normalize_conf") or {}).get("stats_file")
        if stats:
            refs["normalize_conf.stats_file"] = stats
    if isinstance(config.get("token_list"), str):
        refs["token_list"] = config["token_list"]
    for key, path in refs.items():
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{config_file}: {key}: file not found: {path} (paths are relative to the "
                f"directory the model was trained in; run pack from there)"
            )
    return refs


def check_model(config_file: str, model_file: str) -> None:
    """Refuse training-only models; build the model with every weight key matched."""
    import espnet_prune
    from espnet_prune.model_io import build_asr_model

    with open(config_file, encoding="utf-8") as f:
        model_name = (yaml.safe_load(f) or {}).get("model")
    if model_name == "prune_espnet":
        raise ValueError(
            f"{config_file}: model: prune_espnet is a training model (gates, teacher); shrink it "
            "first: python -m espnet_prune.bin.shrink --asr_train_config ... --output_dir DIR, "
            "then pack DIR/config.yaml and DIR/model.pth"
        )
    espnet_prune.register()
    build_asr_model(config_file, model_file)


def pack_model(
    asr_train_config: str,
    asr_model_file: str,
    outpath: str,
    options: Optional[List[str]] = None,
    lm_train_config: Optional[str] = None,
    lm_file: Optional[str] = None,
) -> Path:
    """Check the model, collect its files and write the archive atomically; return its path."""
    from espnet2.main_funcs.pack_funcs import pack

    for key, path in (("--asr_train_config", asr_train_config), ("--asr_model_file", asr_model_file),
                      ("--lm_train_config", lm_train_config), ("--lm_file", lm_file)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{key}: file not found: {path}")
    with open(asr_train_config, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    extra = list(referenced_files(config, asr_train_config).values())
    check_model(asr_train_config, asr_model_file)
    extra += [o for o in options or [] if o not in extra]
    yaml_files = {"asr_train_config": asr_train_config}
    files = {"asr_model_file": asr_model_file}
    if lm_train_config is not None:
        yaml_files["lm_train_config"] = lm_train_config
    if lm_file is not None:
        files["lm_file"] = lm_file
    out = Path(outpath)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:  # same name (ESPnet picks the format by suffix), then one rename
        pack(files=files, yaml_files=yaml_files, outpath=tmp_dir / out.name, option=extra)
        (tmp_dir / out.name).replace(out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def main(cmd: Optional[List[str]] = None) -> Path:
    args = get_parser().parse_args(cmd)
    return pack_model(args.asr_train_config, args.asr_model_file, args.outpath, args.option,
                      args.lm_train_config, args.lm_file)


if __name__ == "__main__":
    main()
