"""Building the mini corpus: synthesise the planned utterances, write the Kaldi dirs.

:func:`make_corpus` is the driver (layout and guarantees: see the package docstring);
it checks the output against ``config.json``, synthesises the missing wavs in forked
children (:func:`run_synthesis`), writes each split's Kaldi files and finally ``.done``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from espnet_prune.data.kaldi_dir import KaldiDataDir, atomic_write_text, write_data_dir
from espnet_prune.data.mini_corpus.audio import (
    SAMPLE_RATE,
    postprocess,
    wav_num_samples,
    write_wav,
)
from espnet_prune.data.mini_corpus.grammar import GRAMMAR
from espnet_prune.data.mini_corpus.plan import (
    ACCENTS,
    SPLITS,
    VARIANTS,
    CorpusConfig,
    Utterance,
    make_plan,
)
from espnet_prune.data.mini_corpus.tts import Synthesizer, get_synthesizer
from espnet_prune.data.pool import ForkedCall, run_jobs
from espnet_prune.fileio import read_marker, write_marker

CORPUS_VERSION = 1  # bump when the generation procedure changes output

Job = Tuple[Utterance, Path]  # an utterance and the wav it is written to


def _synth_one(synth: Synthesizer, utt: Utterance, out_wav: Path, cfg: CorpusConfig) -> None:
    """Speak ``utt`` (rate jittered by +-7 %), post-process it and write ``out_wav``."""
    rng = np.random.default_rng(utt.seed)
    rate = int(round(utt.speaker.rate * rng.uniform(0.93, 1.07)))
    pcm = synth.synthesize(utt.text.lower(), utt.speaker, rate, utt.seed)
    if pcm.size < 0.2 * synth.sample_rate:
        raise RuntimeError(f"{utt.utt_id}: eSpeak returned {pcm.size} samples for "
                           f"{utt.text!r} with voice {utt.speaker.voice}")
    y = postprocess(pcm, synth.sample_rate, rng, (cfg.snr_low, cfg.snr_high))
    write_wav(out_wav, y)


def run_synthesis(synth: Synthesizer, jobs: List[Job], cfg: CorpusConfig, nj: int,
                  log: Callable[[str], None]) -> None:
    """Synthesise each job in its own forked child, at most ``nj`` at a time.

    Forking from a process whose engine never synthesised anything gives every utterance
    the same starting state (eSpeak keeps state such as its pitch-flutter phase between
    utterances), which makes output independent of order and of ``nj``.

    Raises:
        RuntimeError: a job failed (the first to fail: its utterance, text, voice and
            traceback); no job is started after it.
    """
    import scipy.signal  # noqa: F401  (imported once here, not in every forked child: ~2.5 s each)

    t0 = time.time()

    def progress(done: int) -> None:
        if done % 500 == 0:
            log(f"  {done}/{len(jobs)} utterances ({time.time() - t0:.1f} s)")

    def start(i: int) -> ForkedCall:
        utt, path = jobs[i]
        return ForkedCall(_synth_one, synth, utt, path, cfg)

    failures = run_jobs(len(jobs), start, nj, progress)
    if failures:
        utt = jobs[failures[0].index][0]
        tb = failures[0].output.strip()
        last = tb.splitlines()[-1] if tb else f"child exit status {failures[0].code}"
        raise RuntimeError(f"synthesis of utterance {utt.utt_id} ({utt.text!r}, voice "
                           f"{utt.speaker.voice}) failed: {last}\n{tb}")


def _config_record(cfg: CorpusConfig, synth: Synthesizer) -> Dict[str, object]:
    """What ``config.json`` holds: arguments, backend, eSpeak version, grammar hash, voices."""
    return {
        "corpus_version": CORPUS_VERSION,
        "config": asdict(cfg),
        "backend": synth.name,
        "espeak_version": synth.version,
        "grammar_sha1": hashlib.sha1(json.dumps(GRAMMAR, sort_keys=True).encode()).hexdigest(),
        "accents": ACCENTS,
        "variants": VARIANTS,
    }


def is_complete(out_dir: Path, cfg: CorpusConfig) -> bool:
    """True when ``out_dir`` holds a finished corpus made with exactly ``cfg``."""
    rec = read_marker(out_dir)
    if rec is None:
        return False
    return rec.get("config") == asdict(cfg) and rec.get("corpus_version") == CORPUS_VERSION


def _prepare_output(out: Path, record: Dict[str, object], overwrite: bool,
                    log: Callable[[str], None]) -> None:
    """Claim ``out`` for the corpus described by ``record``: write its ``config.json``.

    An output made with the same record is kept (to be resumed); one made with another
    record is removed when ``overwrite``, else refused. ``.done`` is removed either way.

    Raises:
        FileExistsError: ``out`` holds a corpus of another record and not ``overwrite``.
    """
    cfg_file = out / "config.json"
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text())
        except json.JSONDecodeError:
            old = None
        same = old is not None and all(old.get(k) == record[k] for k in record)
        if not same:
            if not overwrite:
                raise FileExistsError(
                    f"{out} holds a corpus made with other arguments/backend ({cfg_file}); "
                    "use another --out_dir or --overwrite")
            log(f"{out}: removing a corpus made with other arguments")
            for sub in ("wav", *SPLITS):
                shutil.rmtree(out / sub, ignore_errors=True)
            for f in (".done", "config.json"):
                (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".done").unlink(missing_ok=True)
    atomic_write_text(cfg_file, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _pending_jobs(out: Path, plan: List[Utterance]) -> List[Job]:
    """The planned utterances whose wav is missing (after removing stale temp files)."""
    for split in SPLITS:
        wdir = out / "wav" / split
        wdir.mkdir(parents=True, exist_ok=True)
        for stale in wdir.glob(".*.tmp"):  # leftovers of an interrupted run
            stale.unlink()
    jobs: List[Job] = []
    for utt in plan:
        path = out / "wav" / utt.split / f"{utt.utt_id}.wav"
        if not path.is_file():
            jobs.append((utt, path))
    return jobs


def write_kaldi_dir(out: Path, name: str, utts: List[Utterance],
                    extra: Optional[Dict[str, Dict[str, str]]] = None) -> int:
    """Write the Kaldi dir ``out/name`` of synthesised ``utts`` (wavs in ``out/wav/name``),
    with ``utt2voice``, ``utt2accent``, ``spk2voice`` and the ``extra`` files; returns #utts."""
    wav_scp, text, utt2spk, utt2dur, utt2voice, utt2accent = {}, {}, {}, {}, {}, {}
    for u in utts:
        path = out / "wav" / name / f"{u.utt_id}.wav"
        wav_scp[u.utt_id] = str(path)
        text[u.utt_id] = u.text
        utt2spk[u.utt_id] = u.speaker.spk_id
        utt2dur[u.utt_id] = wav_num_samples(path) / SAMPLE_RATE
        utt2voice[u.utt_id] = u.speaker.voice
        utt2accent[u.utt_id] = u.speaker.accent
    spk2voice = {s.spk_id: f"{s.voice} rate={s.rate} pitch={s.pitch} "
                 f"range={s.pitch_range} gap={s.word_gap}"
                 for s in {u.speaker for u in utts}}
    data = KaldiDataDir(wav_scp=wav_scp, text=text, utt2spk=utt2spk, utt2dur=utt2dur,
                        extra={"utt2voice": utt2voice, "utt2accent": utt2accent,
                               "spk2voice": spk2voice, **(extra or {})})
    write_data_dir(out / name, data)
    return len(utts)


def make_corpus(
    out_dir: str | os.PathLike,
    cfg: Optional[CorpusConfig] = None,
    nj: int = 2,
    backend: str = "auto",
    overwrite: bool = False,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> Dict[str, object]:
    """Synthesise the corpus into ``out_dir`` (see the package docstring for the layout).

    Args:
        cfg: corpus content parameters (sizes, seed, speakers, lengths, SNR range).
        nj: number of utterances synthesised in parallel (forked processes).
        backend: ``auto`` | ``library`` | ``binary``.
        overwrite: allow replacing an output made with different arguments.

    Returns:
        Summary dict: ``skipped`` (True when already complete), ``synthesised`` (count),
        ``seconds``, ``n_utts`` per split.

    Raises:
        FileExistsError: ``out_dir`` holds a corpus made with other arguments and
            ``overwrite`` is False.
        SynthesisUnavailable: no eSpeak NG backend.
    """
    cfg = cfg or CorpusConfig()
    out = Path(out_dir).resolve()
    t0 = time.time()
    if is_complete(out, cfg):
        log(f"{out}: complete, nothing to do")
        return {"skipped": True, "synthesised": 0, "seconds": 0.0}
    synth = get_synthesizer(backend)
    record = _config_record(cfg, synth)
    _prepare_output(out, record, overwrite, log)

    plan = make_plan(cfg, synth.has_voice)
    jobs = _pending_jobs(out, plan)
    log(f"{out}: {len(plan)} utterances planned, {len(jobs)} to synthesise "
        f"({synth.name}, {synth.version}, nj={nj})")
    t_syn = time.time()
    run_synthesis(synth, jobs, cfg, max(1, nj), log)
    t_syn = time.time() - t_syn

    n_utts = {split: write_kaldi_dir(out, split, [u for u in plan if u.split == split])
              for split in SPLITS}
    seconds = time.time() - t0
    done = dict(record)
    done.update({"n_utts": n_utts, "synthesis_seconds": round(t_syn, 2),
                 "synthesised": len(jobs)})
    write_marker(out, done)
    log(f"{out}: done, {len(jobs)} utterances synthesised in {t_syn:.1f} s "
        f"(total {seconds:.1f} s)")
    return {"skipped": False, "synthesised": len(jobs), "seconds": seconds,
            "synthesis_seconds": t_syn, "n_utts": n_utts}
