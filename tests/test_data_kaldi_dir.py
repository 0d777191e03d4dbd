"""Kaldi data dir I/O: round trip, validation messages, atomic writes, subsets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from espnet_prune.data import kaldi_dir as kd
from espnet_prune.data.kaldi_dir import KaldiDataDir, KaldiDataDirError


def _data() -> KaldiDataDir:
    # deliberately unsorted insertion order
    utts = {"s2-b": ("s2", "HELLO WORLD"), "s1-a": ("s1", "A B C"), "s1-c": ("s1", ""),
            "s2-a": ("s2", "X")}
    return KaldiDataDir(
        wav_scp={u: f"/audio/{u}.wav" for u in utts},
        text={u: t for u, (_, t) in utts.items()},
        utt2spk={u: s for u, (s, _) in utts.items()},
        utt2dur={u: 1.5 for u in utts},
        extra={"utt2voice": {u: "en-us+m3" for u in utts}},
    )


def test_roundtrip_sorted_and_spk2utt(tmp_path: Path) -> None:
    d = tmp_path / "data"
    kd.write_data_dir(d, _data())
    assert (d / "wav.scp").read_text().splitlines() == [
        "s1-a /audio/s1-a.wav", "s1-c /audio/s1-c.wav", "s2-a /audio/s2-a.wav",
        "s2-b /audio/s2-b.wav"]
    assert (d / "spk2utt").read_text() == "s1 s1-a s1-c\ns2 s2-a s2-b\n"
    assert (d / "text").read_text().splitlines()[1] == "s1-c"  # empty transcript kept
    back = kd.read_data_dir(d)
    assert back.text == {k: v for k, v in _data().text.items()}
    assert back.utt2dur == {u: 1.5 for u in back.wav_scp}
    assert back.extra["utt2voice"]["s2-b"] == "en-us+m3"
    assert back.utt_ids == ["s1-a", "s1-c", "s2-a", "s2-b"]
    # no temporary files left behind, normal permissions
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["wav.scp", "text", "utt2spk", "spk2utt", "utt2dur", "utt2voice"])
    mask = os.umask(0)
    os.umask(mask)
    assert (d / "text").stat().st_mode & 0o777 == 0o666 & ~mask


def test_text_utt_missing_from_wav_scp_is_named(tmp_path: Path) -> None:
    d = tmp_path / "data"
    kd.write_data_dir(d, _data())
    with open(d / "text", "a") as f:
        f.write("s3-z EXTRA\n")
    with pytest.raises(KaldiDataDirError, match=r"text: utterance 's3-z' is not in wav.scp"):
        kd.read_data_dir(d)


def test_utt_missing_from_utt2spk_is_named(tmp_path: Path) -> None:
    data = _data()
    del data.utt2spk["s2-a"]
    with pytest.raises(KaldiDataDirError, match=r"utt2spk: utterance 's2-a' from wav.scp is missing"):
        kd.write_data_dir(tmp_path / "d", data)
    assert not (tmp_path / "d").exists()  # validation happens before writing


def test_duplicate_key_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "wav.scp"
    p.write_text("a /x.wav\nb /y.wav\na /z.wav\n")
    with pytest.raises(KaldiDataDirError, match=r"wav.scp:3: duplicate key 'a' \(first seen on line 1\)"):
        kd.read_kaldi_map(p)


def test_empty_value_rejected_in_wav_scp(tmp_path: Path) -> None:
    p = tmp_path / "wav.scp"
    p.write_text("a /x.wav\nb\n")
    with pytest.raises(KaldiDataDirError, match=r"wav.scp:2: key 'b' has no value"):
        kd.read_kaldi_map(p)


def test_speaker_not_prefix_is_reported(tmp_path: Path) -> None:
    data = _data()
    data.utt2spk["s1-a"] = "zz"  # sorting utts no longer sorts speakers
    with pytest.raises(KaldiDataDirError, match="does not sort by speaker"):
        kd.validate_data_dir(data)


def test_inconsistent_spk2utt_on_disk(tmp_path: Path) -> None:
    d = tmp_path / "data"
    kd.write_data_dir(d, _data())
    (d / "spk2utt").write_text("s1 s1-a\ns2 s2-a s2-b\n")
    with pytest.raises(KaldiDataDirError, match=r"spk2utt: utterances of speaker 's1' disagree"):
        kd.validate_data_dir(d)


def test_bad_duration(tmp_path: Path) -> None:
    d = tmp_path / "data"
    kd.write_data_dir(d, _data())
    (d / "utt2dur").write_text("s1-a 1.0\ns1-c abc\ns2-a 1\ns2-b 1\n")
    with pytest.raises(KaldiDataDirError, match=r"utt2dur: utterance 's1-c' has a non-numeric"):
        kd.read_data_dir(d)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "text"
    p.write_text("old content\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(kd.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        kd.atomic_write_text(p, "new content\n")
    assert p.read_text() == "old content\n"
    assert [x.name for x in tmp_path.iterdir()] == ["text"]  # temp file removed


def test_subset_restricts_every_table(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = _data()
    data.extra["feats.scp"] = {u: f"/f.ark:{i}" for i, u in enumerate(sorted(data.wav_scp))}
    data.extra["spk2gender"] = {"s1": "f", "s2": "m"}
    kd.write_data_dir(src, data)
    out = kd.subset_data_dir(src, dst, ["s2-b", "s1-a"])
    assert out.utt_ids == ["s1-a", "s2-b"]
    for name in ("wav.scp", "text", "utt2spk", "utt2dur", "utt2voice", "feats.scp"):
        assert [ln.split()[0] for ln in (dst / name).read_text().splitlines()] == ["s1-a", "s2-b"]
    assert (dst / "spk2utt").read_text() == "s1 s1-a\ns2 s2-b\n"
    assert (dst / "spk2gender").read_text() == "s1 f\ns2 m\n"
    kd.subset_data_dir(src, tmp_path / "one", ["s2-a"])
    assert (tmp_path / "one" / "spk2gender").read_text() == "s2 m\n"
    with pytest.raises(KaldiDataDirError, match="'nope' to keep is not in wav.scp"):
        kd.subset_data_dir(src, tmp_path / "x", ["nope"])


def test_fix_data_dir_drops_partial_utterances(tmp_path: Path) -> None:
    d = tmp_path / "data"
    kd.write_data_dir(d, _data())
    (d / "text").write_text("s2-b HELLO\ns1-a A\n")  # unsorted, two utts missing
    fixed = kd.fix_data_dir(d)
    assert fixed.utt_ids == ["s1-a", "s2-b"]
    kd.validate_data_dir(d)
    assert (d / "text").read_text() == "s1-a A\ns2-b HELLO\n"


def test_cli_validate(tmp_path: Path, capsys) -> None:
    d = tmp_path / "data"
    kd.write_data_dir(d, _data())
    assert kd.main(["validate", str(d)]) == 0
    assert "4 utterances, 2 speakers" in capsys.readouterr().out
    (d / "utt2spk").write_text("s1-a s1\n")
    assert kd.main(["validate", str(d)]) == 1
    assert "utt2spk: utterance 's1-c' from wav.scp is missing" in capsys.readouterr().err
