"""The teacher side of pruning: a pruning config merged with the teacher's architecture, and
importing a model the user already has (an ESPnet ASR Conformer trained by ESPnet's own recipes).

Stage 5 writes every pruning run's config with ``prune_config`` (the recipe's own baseline is a
teacher too). ``run.sh --teacher_config CONFIG --teacher_model PTH`` calls these steps before
any stage::

    python -m espnet_prune.recipe.teacher check --teacher_config C --teacher_model M \\
        [--teacher_root DIR] --prune_config P [--data_dir D/train --data_dir D/dev ...]
    python -m espnet_prune.recipe.teacher import --teacher_config C --teacher_model M \\
        [--teacher_root DIR] --output_dir exp/x/asr_teacher/final
    python -m espnet_prune.recipe.teacher prune_config --teacher_dir exp/x/asr_teacher/final \\
        --prune_config conf/prune_asr_conformer.yaml --target params:0.5 --output exp/x/p/train.yaml
    python -m espnet_prune.recipe.teacher check_prune_config --prune_config conf/prune_asr_conformer.yaml
    python -m espnet_prune.recipe.teacher shapes --teacher_dir T --data_dir dump/raw/train --out_dir exp/x/data/train
    python -m espnet_prune.recipe.teacher speech_type --data_dir dump/raw/train      # prints sound | kaldi_ark

**Paths in the teacher's config** (``normalize_conf.stats_file``, ``bpemodel``, a
``token_list`` given as a file) are resolved in this order, first hit wins: as written
when absolute; relative to ``--teacher_root``; relative to the current directory (the
recipe dir an ESPnet ``config.yaml`` was written from); relative to the config's own
directory and then each of its parents (an unpacked model archive holds
``exp/<model>/config.yaml`` next to ``exp/<stats>/...`` and ``data/<token_list>/...``,
all relative to the archive root). A path found nowhere is an error that lists every
place tried.

**Import** copies the weights, the stats file and the BPE model into ``--output_dir``
and rewrites the config to point at the copies: the experiment is self-contained and
the user's directories are never written to.

**Checks** (each a :class:`TeacherError` naming the file, key and value):

* the encoder is ESPnet's ``conformer`` with options the gated encoder accepts, the
  decoder ``transformer`` (or none), the frontend ``default`` (STFT + mel), no
  pre/post-encoder;
* the stats file of ``normalize: global_mvn`` and the BPE model exist;
* every entry of the token list other than ``<blank>``, ``<unk>``, ``<sos/eos>`` is a
  piece of the BPE model (a token list from another BPE model fails here);
* the data's text does not map to ``<unk>``: over the first ``--check_utts``
  utterances of every data dir, at most ``--max_unk_rate`` (default 1 %) of the
  tokens are ``<unk>`` (what ESPnet's token converter gives for a piece or character
  missing from the token list; e.g. lower-case text for an upper-case model gives
  nearly 100 %). The teacher's text ``cleaner`` is not applied;
* every data dir has ``wav.scp`` and ``text`` with the same utterances.

**Pruning config** = the teacher's architecture, frontend, normalization, tokens and
ESPnet model options + the pruning config's options (gates, target, distillation,
optimizers, schedule). The pruning config may not restate the architecture: a key
such as ``encoder_conf.output_size`` or ``frontend`` there is an error; it may set
``gate_granularities``, ``gate_conf`` and ``*dropout*`` rates in ``encoder_conf`` /
``decoder_conf``, and ``specaug`` / ``specaug_conf`` (they replace the teacher's).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from espnet_prune.fileio import atomic_copy, atomic_write_text

#: Keys a training config takes from the teacher's config.yaml.
TEACHER_KEYS = (
    "frontend", "frontend_conf", "specaug", "specaug_conf", "normalize", "normalize_conf",
    "input_size", "encoder", "encoder_conf", "decoder", "decoder_conf", "ctc_conf",
    "token_list", "token_type", "bpemodel", "non_linguistic_symbols", "cleaner", "g2p",
)
#: Teacher keys the pruning config may replace.
OVERRIDABLE = ("specaug", "specaug_conf")
#: encoder_conf / decoder_conf keys the pruning config may set.
GATE_KEYS = ("gate_granularities", "gate_conf")
SPECIAL_TOKENS = ("<blank>", "<unk>", "<sos/eos>")


class TeacherError(ValueError):
    """A teacher config, its files or the data cannot be used; the message names what."""


# --------------------------------------------------------------------------- paths


def resolve_path(value: str, key: str, config: Path, root: Optional[Path] = None) -> Path:
    """Find the file ``value`` named by ``key`` of ``config`` (module docstring: the order)."""
    p = Path(value)
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = ([root / p] if root is not None else []) + [Path.cwd() / p]
        d = config.resolve().parent
        candidates += [d / p] + [a / p for a in d.parents]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c.parent) for c in candidates[:6]) + (", ..." if len(candidates) > 6 else "")
    raise TeacherError(f"{config}: {key}={value}: file not found (looked in: {tried}); "
                       "pass --teacher_root with the directory the paths are relative to")


def load_config(config: Path) -> Dict[str, Any]:
    config = Path(config)
    if not config.is_file():
        raise TeacherError(f"{config}: file not found")
    try:
        conf = yaml.safe_load(config.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TeacherError(f"{config}: not valid YAML: {e}") from e
    if not isinstance(conf, dict):
        raise TeacherError(f"{config}: expected a mapping of ESPnet training options")
    return conf


def teacher_files(config: Path, conf: Dict[str, Any], root: Optional[Path]) -> Dict[str, Path]:
    """Resolved files of the teacher: ``stats_file``, ``bpemodel``, ``token_list`` (when a path)."""
    out: Dict[str, Path] = {}
    if conf.get("normalize") == "global_mvn":
        stats = (conf.get("normalize_conf") or {}).get("stats_file")
        if not stats:
            raise TeacherError(f"{config}: normalize: global_mvn without normalize_conf.stats_file")
        out["stats_file"] = resolve_path(str(stats), "normalize_conf.stats_file", config, root)
    elif conf.get("normalize") not in (None, "utterance_mvn"):
        raise TeacherError(f"{config}: normalize={conf.get('normalize')!r}: supported are "
                           "global_mvn, utterance_mvn or none")
    if conf.get("token_type") == "bpe":
        if not conf.get("bpemodel"):
            raise TeacherError(f"{config}: token_type: bpe without bpemodel")
        out["bpemodel"] = resolve_path(str(conf["bpemodel"]), "bpemodel", config, root)
    if isinstance(conf.get("token_list"), str):
        out["token_list"] = resolve_path(conf["token_list"], "token_list", config, root)
    return out


def token_list_of(config: Path, conf: Dict[str, Any], files: Dict[str, Path]) -> List[str]:
    tokens = conf.get("token_list")
    if "token_list" in files:
        tokens = [l.split()[0] for l in files["token_list"].read_text(encoding="utf-8").splitlines() if l.strip()]
    if not isinstance(tokens, list) or not tokens:
        raise TeacherError(f"{config}: token_list is missing or empty")
    return [str(t) for t in tokens]


# --------------------------------------------------------------------------- checks


def check_architecture(config: Path, conf: Dict[str, Any], gated_decoder: bool = True) -> None:
    """The teacher is a Conformer the gated encoder (and decoder) can take."""
    from espnet_prune.structure import check_supported_conf

    if conf.get("encoder") != "conformer":
        raise TeacherError(f"{config}: encoder={conf.get('encoder')!r}: only ESPnet's 'conformer' "
                           "encoder can be pruned")
    try:
        check_supported_conf(dict(conf.get("encoder_conf") or {}))
    except ValueError as e:
        raise TeacherError(f"{config}: {e}") from e
    if conf.get("decoder") not in (None, "none", "transformer"):
        raise TeacherError(f"{config}: decoder={conf.get('decoder')!r}: supported are "
                           "'transformer' or none")
    if gated_decoder and conf.get("decoder") in (None, "none"):
        raise TeacherError(f"{config}: the pruning config gates the decoder "
                           "(decoder: gated_transformer) but the teacher has none")
    if conf.get("frontend") not in ("default", None):
        raise TeacherError(f"{config}: frontend={conf.get('frontend')!r}: supported is 'default' "
                           "(STFT + mel) or none")
    for key in ("preencoder", "postencoder"):
        if conf.get(key) not in (None, "none"):
            raise TeacherError(f"{config}: {key}={conf.get(key)!r}: pruning supports no {key}")
    if conf.get("model", "espnet") != "espnet":
        raise TeacherError(f"{config}: model={conf.get('model')!r}: the teacher must be a "
                           "plain 'espnet' CTC/attention model")


def check_tokens(config: Path, conf: Dict[str, Any], files: Dict[str, Path]) -> None:
    """Token list entries are pieces of the BPE model (bpe) -- the tokenizer and list match."""
    tokens = token_list_of(config, conf, files)
    if conf.get("token_type") not in ("bpe", "char"):
        raise TeacherError(f"{config}: token_type={conf.get('token_type')!r}: supported are bpe and char")
    if tokens[0] != "<blank>" or tokens[-1] != "<sos/eos>" or "<unk>" not in tokens:
        raise TeacherError(f"{config}: token_list must start with <blank>, hold <unk> and end "
                           f"with <sos/eos> (ESPnet's layout), got {tokens[:2]} ... {tokens[-1:]}")
    if conf.get("token_type") == "bpe":
        sp = _sentencepiece(files["bpemodel"])
        unk = sp.unk_id()
        foreign = [t for t in tokens if t not in SPECIAL_TOKENS and sp.piece_to_id(t) == unk]
        if foreign:
            raise TeacherError(
                f"{config}: token_list does not match bpemodel {files['bpemodel']}: "
                f"{len(foreign)} of {len(tokens)} tokens are not pieces of it, e.g. {foreign[:5]}")


def _sentencepiece(path: Path):
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except Exception as e:  # noqa: BLE001 - name the file
        raise TeacherError(f"bpemodel {path}: not a sentencepiece model: {e}") from e


class Tokenizer:
    """Text -> token strings as ESPnet's ``bpe`` / ``char`` tokenizers give them."""

    def __init__(self, token_type: str, bpemodel: Optional[Path]) -> None:
        self.token_type = token_type
        self.sp = _sentencepiece(bpemodel) if token_type == "bpe" else None

    def __call__(self, text: str) -> List[str]:
        if self.sp is not None:
            return self.sp.encode(text, out_type=str)
        return ["<space>" if c == " " else c for c in text]


def unk_rate(text: Path, tokenizer: Tokenizer, tokens: Sequence[str], max_utts: int) -> Tuple[float, int, Optional[str]]:
    """(fraction of tokens mapped to <unk>, tokens counted, an utterance with an <unk>)
    over the first ``max_utts`` lines of a Kaldi ``text`` file."""
    known = set(tokens) - {"<unk>"}
    n = bad = 0
    example = None
    with Path(text).open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= max_utts:
                break
            parts = line.rstrip("\n").split(maxsplit=1)
            if len(parts) < 2:
                continue
            pieces = tokenizer(parts[1])
            missing = [p for p in pieces if p not in known]
            n += len(pieces)
            bad += len(missing)
            if missing and example is None:
                example = f"{parts[0]} ({parts[1][:60]!r} -> {missing[:3]})"
    return (bad / n if n else 0.0), n, example


def check_data(data_dir: Path) -> None:
    """``wav.scp`` and ``text`` exist, are not empty and hold the same utterances."""
    keys = {}
    for name in ("wav.scp", "text"):
        path = Path(data_dir) / name
        if not path.is_file():
            raise TeacherError(f"{path}: not found (--data_format raw needs wav.scp and text per set)")
        keys[name] = {l.split(maxsplit=1)[0] for l in path.read_text(encoding="utf-8").splitlines() if l.strip()}
        if not keys[name]:
            raise TeacherError(f"{path}: empty")
    only = sorted(keys["text"] ^ keys["wav.scp"])
    if only:
        where = "text" if only[0] in keys["text"] else "wav.scp"
        raise TeacherError(f"{data_dir}: {len(only)} utterances are in only one of wav.scp and text, "
                           f"e.g. {only[0]} (only in {where})")


def check_all(config: Path, model: Path, root: Optional[Path], prune_config: Optional[Path],
              data_dirs: Sequence[Path], max_unk_rate: float = 0.01, check_utts: int = 1000) -> None:
    """Every check of the module docstring, cheapest first; raises :class:`TeacherError`."""
    conf = load_config(config)
    if not Path(model).is_file():
        raise TeacherError(f"--teacher_model: file not found: {model}")
    gated_decoder = True
    if prune_config is not None:
        prune = load_config(prune_config)
        gated_decoder = prune.get("decoder") == "gated_transformer"
        merge_configs(conf, prune, where=str(prune_config))  # conflicts in the pruning config
    check_architecture(config, conf, gated_decoder)
    files = teacher_files(config, conf, root)
    check_tokens(config, conf, files)
    tokens = token_list_of(config, conf, files)
    tokenizer = Tokenizer(conf["token_type"], files.get("bpemodel"))
    for d in data_dirs:
        check_data(d)
        rate, n, example = unk_rate(Path(d) / "text", tokenizer, tokens, check_utts)
        if rate > max_unk_rate:
            raise TeacherError(
                f"{Path(d) / 'text'}: {rate:.1%} of {n} tokens map to <unk> with the teacher's "
                f"token list (--max_unk_rate {max_unk_rate}), e.g. {example}: the text does not "
                "match the teacher's tokens (other case, other normalization or another language?)")
    types = {speech_type(d) for d in data_dirs}
    if len(types) > 1:
        raise TeacherError(f"{', '.join(map(str, data_dirs))}: wav.scp files mix sound and kaldi_ark entries")


# --------------------------------------------------------------------------- import


def import_teacher(config: Path, model: Path, output_dir: Path, root: Optional[Path] = None) -> Path:
    """Copy the teacher into ``output_dir``: ``model.pth``, ``feats_stats.npz``,
    ``bpe.model``, ``tokens.txt`` and a ``config.yaml`` pointing at the copies (paths
    relative to the current directory when ``output_dir`` is). ``model.pth`` is
    written last: its presence marks a complete import. Returns the config path."""
    conf = load_config(config)
    files = teacher_files(config, conf, root)
    tokens = token_list_of(config, conf, files)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = dict(conf)
    if "stats_file" in files:
        atomic_copy(files["stats_file"], out / "feats_stats.npz")
        conf["normalize_conf"] = dict(conf["normalize_conf"], stats_file=str(out / "feats_stats.npz"))
    if "bpemodel" in files:
        atomic_copy(files["bpemodel"], out / "bpe.model")
        conf["bpemodel"] = str(out / "bpe.model")
    conf["token_list"] = tokens
    atomic_write_text(out / "tokens.txt", "\n".join(tokens) + "\n")
    atomic_write_text(out / "config.yaml", yaml.safe_dump(conf, sort_keys=False, allow_unicode=True))
    atomic_copy(Path(model), out / "model.pth")
    return out / "config.yaml"


# --------------------------------------------------------------------------- merged config


def check_prune_options(prune: Dict[str, Any], where: str = "pruning config") -> None:
    """A pruning config holds pruning options only (module docstring); else a
    :class:`TeacherError` naming ``where`` and the first offending key."""
    clash = [k for k in TEACHER_KEYS if k in prune and k not in OVERRIDABLE
             and k not in ("encoder", "encoder_conf", "decoder", "decoder_conf")]
    if clash:
        raise TeacherError(f"{where}: {clash[0]}: comes from the teacher's config, remove it "
                           "(the pruning config holds only pruning options)")
    for part in ("encoder", "decoder"):
        extra = [k for k in (prune.get(f"{part}_conf") or {})
                 if k not in GATE_KEYS and "dropout" not in k]
        if extra:
            raise TeacherError(f"{where}: {part}_conf.{extra[0]}: the architecture comes from the "
                               f"teacher; {part}_conf may only set {', '.join(GATE_KEYS)} and dropout rates")
    if prune.get("encoder", "gated_conformer") != "gated_conformer":
        raise TeacherError(f"{where}: encoder={prune.get('encoder')!r}: a pruning config uses gated_conformer")
    if prune.get("decoder") not in (None, "gated_transformer"):
        raise TeacherError(f"{where}: decoder={prune.get('decoder')!r}: use gated_transformer or leave it out")


def merge_configs(teacher: Dict[str, Any], prune: Dict[str, Any], where: str = "pruning config") -> Dict[str, Any]:
    """Training config = teacher architecture + pruning options (module docstring)."""
    check_prune_options(prune, where)
    out = {k: v for k, v in prune.items() if k not in ("model_conf",)}
    for k in TEACHER_KEYS:
        if k in teacher and not (k in OVERRIDABLE and k in prune):
            out[k] = teacher[k]
    out["encoder"] = "gated_conformer"
    out["encoder_conf"] = {**(teacher.get("encoder_conf") or {}), **(prune.get("encoder_conf") or {})}
    if prune.get("decoder") == "gated_transformer":
        out["decoder"] = "gated_transformer"
        out["decoder_conf"] = {**(teacher.get("decoder_conf") or {}), **(prune.get("decoder_conf") or {})}
    model_conf = dict(teacher.get("model_conf") or {})
    model_conf.update(prune.get("model_conf") or {})
    if teacher.get("frontend") == "default" and "cost_frames_per_second" not in (prune.get("model_conf") or {}):
        model_conf["cost_frames_per_second"] = frontend_frames_per_second(teacher)
    out["model"] = "prune_espnet"
    out["model_conf"] = model_conf
    return out


def frontend_frames_per_second(conf: Dict[str, Any]) -> float:
    """Feature frames per second of a ``default`` frontend (fs / hop_length)."""
    from espnet_prune.bin.profile import frames_per_second

    return frames_per_second(argparse.Namespace(**conf))


def write_prune_config(teacher_dir: Path, prune_config: Path, output: Path,
                       target: Optional[List[str]] = None, bound: Optional[str] = None) -> None:
    """Write the merged pruning config; the teacher is ``teacher_dir/{config.yaml,model.pth}``
    and ``target`` (``kind:value`` specs) sets ``model_conf.target``: ``{kind: value}`` for
    one, ``{kind: [values]}`` for a family (:mod:`espnet_prune.family`, one kind); ``bound``
    (``kind:value``) sets ``model_conf.bound`` (a ``decode`` bound needs the pruning config's
    ``model_conf.latency_table``)."""
    teacher = load_config(Path(teacher_dir) / "config.yaml")
    conf = merge_configs(teacher, load_config(prune_config), where=str(prune_config))
    conf["model_conf"]["teacher_config"] = str(Path(teacher_dir) / "config.yaml")
    conf["model_conf"]["teacher_model_file"] = str(Path(teacher_dir) / "model.pth")
    if target:
        kinds = {spec.split(":")[0] for spec in target}
        values = [float(spec.split(":")[1]) for spec in target]
        if len(kinds) != 1:
            raise TeacherError(f"--target {' '.join(target)}: a family's targets must have one kind")
        conf["model_conf"]["target"] = {kinds.pop(): values[0] if len(values) == 1 else values}
    if bound:
        kind, _, value = bound.partition(":")
        if kind == "decode" and not conf["model_conf"].get("latency_table"):
            raise TeacherError(f"--bound {bound}: {prune_config} has no model_conf.latency_table "
                               "(python -m espnet_prune.bin.latency measures one)")
        conf["model_conf"]["bound"] = {kind: float(value)}
    atomic_write_text(output, yaml.safe_dump(conf, sort_keys=False, allow_unicode=True))


# --------------------------------------------------------------------------- data


def speech_type(data_dir: Path) -> str:
    """ESPnet data type of ``wav.scp``: ``kaldi_ark`` (``x.ark:offset`` entries) or
    ``sound`` (audio files that soundfile reads); pipes are refused."""
    path = Path(data_dir) / "wav.scp"
    with path.open(encoding="utf-8") as f:
        first = f.readline().rstrip("\n").split(maxsplit=1)
    if len(first) != 2:
        raise TeacherError(f"{path}: first line is not 'utt location'")
    loc = first[1].strip()
    if loc.endswith("|"):
        raise TeacherError(f"{path}: {first[0]} is a pipe ({loc[:40]}...): run ESPnet's asr.sh "
                           "format stage (dump/raw/<set>/wav.scp) first")
    head, _, tail = loc.rpartition(":")
    return "kaldi_ark" if head and tail.isdigit() and ".ark" in head else "sound"


def num_samples(data_dir: Path) -> Dict[str, int]:
    """Samples per utterance: ``utt2num_samples`` when asr.sh wrote it, else read from the audio."""
    data_dir = Path(data_dir)
    u2n = data_dir / "utt2num_samples"
    keys = [l.split(maxsplit=1) for l in (data_dir / "wav.scp").read_text(encoding="utf-8").splitlines() if l.strip()]
    if u2n.is_file():
        known = {k: int(v) for k, v in (l.split() for l in u2n.read_text().splitlines() if l.strip())}
        if all(k in known for k, _ in keys):
            return {k: known[k] for k, _ in keys}
    out = {}
    kind = speech_type(data_dir)
    for utt, loc in keys:
        try:
            if kind == "sound":
                import soundfile

                out[utt] = int(soundfile.info(loc).frames)
            else:
                import kaldiio

                rate_and_data = kaldiio.load_mat(loc)
                data = rate_and_data[1] if isinstance(rate_and_data, tuple) else rate_and_data
                out[utt] = int(len(data))
        except Exception as e:  # noqa: BLE001 - name the utterance
            raise TeacherError(f"{data_dir / 'wav.scp'}: cannot read {utt} from {loc}: {e}") from e
    return out


def write_shapes(teacher_dir: Path, data_dir: Path, out_dir: Path) -> None:
    """``speech_shape`` (samples) and ``text_shape.bpe`` (tokens, vocabulary size) of a raw
    data dir, written into ``out_dir`` (never into ``data_dir``)."""
    conf = load_config(Path(teacher_dir) / "config.yaml")
    tokens = conf["token_list"]
    bpemodel = conf.get("bpemodel")
    tokenizer = Tokenizer(conf["token_type"], Path(bpemodel) if bpemodel else None)
    out = Path(out_dir)
    samples = num_samples(data_dir)
    atomic_write_text(out / "speech_shape", "".join(f"{u} {n}\n" for u, n in samples.items()))
    lines = []
    for line in (Path(data_dir) / "text").read_text(encoding="utf-8").splitlines():
        parts = line.split(maxsplit=1)
        if parts:
            n = len(tokenizer(parts[1] if len(parts) > 1 else ""))
            lines.append(f"{parts[0]} {n},{len(tokens)}\n")
    atomic_write_text(out / "text_shape.bpe", "".join(lines))


# --------------------------------------------------------------------------- CLI


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    i = sub.add_parser("import")
    for s in (c, i):
        s.add_argument("--teacher_config", type=Path, required=True)
        s.add_argument("--teacher_model", type=Path, required=True)
        s.add_argument("--teacher_root", type=Path, default=None)
    c.add_argument("--prune_config", type=Path, default=None)
    c.add_argument("--data_dir", type=Path, action="append", default=[])
    c.add_argument("--max_unk_rate", type=float, default=0.01)
    c.add_argument("--check_utts", type=int, default=1000)
    i.add_argument("--output_dir", type=Path, required=True)
    o = sub.add_parser("check_prune_config")
    o.add_argument("--prune_config", type=Path, required=True)
    m = sub.add_parser("prune_config")
    m.add_argument("--teacher_dir", type=Path, required=True)
    m.add_argument("--prune_config", type=Path, required=True)
    m.add_argument("--target", nargs="+", default=None, metavar="KIND:X",
                   help="one target, or several (of one kind) for a family")
    m.add_argument("--bound", default=None, metavar="KIND:X",
                   help="a second cost held at least at sparsity X (model_conf.bound)")
    m.add_argument("--output", type=Path, required=True)
    sh = sub.add_parser("shapes")
    sh.add_argument("--teacher_dir", type=Path, required=True)
    sh.add_argument("--data_dir", type=Path, required=True)
    sh.add_argument("--out_dir", type=Path, required=True)
    st = sub.add_parser("speech_type")
    st.add_argument("--data_dir", type=Path, required=True)
    a = p.parse_args(argv)
    try:
        if a.cmd == "check":
            check_all(a.teacher_config, a.teacher_model, a.teacher_root, a.prune_config,
                      a.data_dir, a.max_unk_rate, a.check_utts)
        elif a.cmd == "import":
            import_teacher(a.teacher_config, a.teacher_model, a.output_dir, a.teacher_root)
        elif a.cmd == "check_prune_config":
            check_prune_options(load_config(a.prune_config), where=str(a.prune_config))
        elif a.cmd == "prune_config":
            write_prune_config(a.teacher_dir, a.prune_config, a.output, a.target, a.bound)
        elif a.cmd == "shapes":
            write_shapes(a.teacher_dir, a.data_dir, a.out_dir)
        else:
            print(speech_type(a.data_dir))
    except TeacherError as e:
        print(f"TeacherError: {e}", file=__import__("sys").stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
