"""LibriSpeech: data prep on a tiny LibriSpeech-shaped tree, resumable download, extraction.

Nothing is downloaded from the internet: downloads go to a local HTTP server.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile

from espnet_prune.data import librispeech as L
from espnet_prune.data.features import extract_features
from espnet_prune.data.kaldi_dir import KaldiDataDirError, read_data_dir

# reader -> chapter -> [(utterance index, transcript, n_samples)]
TREE = {
    "19": {"198": [(0, "NORTHANGER ABBEY", 8000), (1, "THIS LITTLE WORK WAS FINISHED", 12000)]},
    "26": {"495": [(0, "CHAPTER ONE", 6400)], "496": [(3, "MISSUS RACHEL LYNDE", 9600)]},
}
SPEAKERS_TXT = """\
;ID  |SEX| SUBSET           |MINUTES| NAME
19   | F | train-clean-100  | 25.19 | Kara Shallenberg
26   | M | train-clean-100  | 25.08 | Denny Sayers
"""


def make_tree(root: Path, subset: str = "dev-clean") -> Path:
    """Write LibriSpeech/<subset>/<reader>/<chapter>/ with flac files + trans.txt."""
    sub = root / "LibriSpeech" / subset
    rng = np.random.default_rng(0)
    for reader, chapters in TREE.items():
        for chapter, utts in chapters.items():
            d = sub / reader / chapter
            d.mkdir(parents=True)
            lines = []
            for idx, text, n in utts:
                utt = f"{reader}-{chapter}-{idx:04d}"
                soundfile.write(d / f"{utt}.flac", 0.1 * rng.standard_normal(n), 16000,
                                format="FLAC", subtype="PCM_16")
                lines.append(f"{utt} {text}\n")
            (d / f"{reader}-{chapter}.trans.txt").write_text("".join(lines))
    (root / "LibriSpeech" / "SPEAKERS.TXT").write_text(SPEAKERS_TXT)
    return sub


def test_md5_table_complete() -> None:
    for s in ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100",
              "train-clean-360", "train-other-500"):
        assert re.fullmatch(r"[0-9a-f]{32}", L.MD5SUMS[s])
        assert L.RESOURCE[s] == 12


def test_prepare_subset(tmp_path: Path) -> None:
    sub = make_tree(tmp_path)
    out = tmp_path / "data" / "dev_clean"
    L.prepare_subset(sub, out, log=lambda s: None)
    d = read_data_dir(out)  # validates
    assert d.utt_ids == ["19-198-0000", "19-198-0001", "26-495-0000", "26-496-0003"]
    assert d.wav_scp["26-496-0003"] == str((sub / "26" / "496" / "26-496-0003.flac").resolve())
    assert d.text["19-198-0001"] == "THIS LITTLE WORK WAS FINISHED"
    assert d.utt2spk["26-495-0000"] == "26-495"  # Kaldi: speaker = reader-chapter
    assert d.utt2dur["19-198-0001"] == pytest.approx(12000 / 16000)
    assert (out / "spk2gender").read_text() == "19-198 f\n26-495 m\n26-496 m\n"
    assert (out / "spk2utt").read_text().splitlines()[0] == "19-198 19-198-0000 19-198-0001"
    assert L.data_dir_name("train-clean-100") == "train_clean_100"


def test_prepared_flac_dir_gives_features(tmp_path: Path) -> None:
    sub = make_tree(tmp_path)
    L.prepare_subset(sub, tmp_path / "data", log=lambda s: None)
    extract_features(tmp_path / "data", tmp_path / "fbank", log=lambda s: None)
    frames = dict(ln.split() for ln in (tmp_path / "fbank" / "utt2num_frames").read_text().splitlines())
    assert frames == {"19-198-0000": "51", "19-198-0001": "76", "26-495-0000": "41",
                      "26-496-0003": "61"}


def test_missing_flac_names_utterance_and_path(tmp_path: Path) -> None:
    sub = make_tree(tmp_path)
    victim = sub / "26" / "495" / "26-495-0000.flac"
    victim.unlink()
    with pytest.raises(KaldiDataDirError,
                       match=rf"utterance '26-495-0000'.*audio file not found: {re.escape(str(victim))}"):
        L.prepare_subset(sub, tmp_path / "data", log=lambda s: None)
    assert not (tmp_path / "data").exists()


def test_transcript_with_foreign_id_is_rejected(tmp_path: Path) -> None:
    sub = make_tree(tmp_path)
    t = sub / "19" / "198" / "19-198.trans.txt"
    t.write_text(t.read_text() + "26-495-0000 WRONG PLACE\n")
    with pytest.raises(KaldiDataDirError, match=r"19-198.trans.txt:3: utterance id '26-495-0000'"):
        L.prepare_subset(sub, tmp_path / "data", log=lambda s: None)


# --------------------------------------------------------------------------- download


class _Server:
    """Local HTTP server for one payload; optional Range support and connection drops."""

    def __init__(self, payload: bytes, support_range: bool = True, drop_after: int = 0):
        self.payload = payload
        self.support_range = support_range
        self.drop_after = drop_after  # first full response stops after this many bytes
        self.requests: List[Dict[str, str]] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                outer.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
                data, start = outer.payload, 0
                rng = self.headers.get("Range")
                if rng and outer.support_range:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.drop_after and len(outer.requests) == 1:
                    self.wfile.write(body[: outer.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dev-clean.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


PAYLOAD = bytes(np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8))
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_download_resumes_partial_file(tmp_path: Path) -> None:
    dest = tmp_path / "dev-clean.tar.gz"
    (tmp_path / "dev-clean.tar.gz.part").write_bytes(PAYLOAD[:100_000])
    with _Server(PAYLOAD) as srv:
        L.download_file(srv.url, dest, md5=PAYLOAD_MD5, log=lambda s: None)
    assert dest.read_bytes() == PAYLOAD
    assert srv.requests[0]["range"] == "bytes=100000-"
    assert not (tmp_path / "dev-clean.tar.gz.part").exists()


def test_download_retries_after_dropped_connection(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(L.time, "sleep", lambda s: None)
    dest = tmp_path / "x.tar.gz"
    with _Server(PAYLOAD, drop_after=120_000) as srv:
        L.download_file(srv.url, dest, md5=PAYLOAD_MD5, log=lambda s: None)
    assert dest.read_bytes() == PAYLOAD
    assert len(srv.requests) == 2 and srv.requests[1]["range"] == "bytes=120000-"


def test_download_restarts_when_range_is_ignored(tmp_path: Path) -> None:
    dest = tmp_path / "x.tar.gz"
    (tmp_path / "x.tar.gz.part").write_bytes(b"stale bytes that are wrong")
    with _Server(PAYLOAD, support_range=False) as srv:
        L.download_file(srv.url, dest, md5=PAYLOAD_MD5, log=lambda s: None)
    assert dest.read_bytes() == PAYLOAD


def test_download_checksum_mismatch(tmp_path: Path) -> None:
    dest = tmp_path / "x.tar.gz"
    with _Server(PAYLOAD) as srv:
        with pytest.raises(L.ChecksumError, match="MD5"):
            L.download_file(srv.url, dest, md5="0" * 32, log=lambda s: None)
    assert not dest.exists() and not (tmp_path / "x.tar.gz.part").exists()


def test_download_skips_existing_verified_file(tmp_path: Path) -> None:
    dest = tmp_path / "x.tar.gz"
    dest.write_bytes(PAYLOAD)
    with _Server(PAYLOAD) as srv:
        L.download_file(srv.url, dest, md5=PAYLOAD_MD5, log=lambda s: None)
    assert srv.requests == []


def _tar_of(tree_root: Path, tar_path: Path) -> None:
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(tree_root / "LibriSpeech", arcname="LibriSpeech")


def test_fetch_extract_prepare_end_to_end(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    make_tree(src)
    tar = tmp_path / "dev-clean.tar.gz"
    _tar_of(src, tar)
    payload = tar.read_bytes()
    monkeypatch.setitem(L.MD5SUMS, "dev-clean", hashlib.md5(payload).hexdigest())
    monkeypatch.setattr(L.time, "sleep", lambda s: None)
    dl = tmp_path / "downloads"
    with _Server(payload) as srv:
        base = srv.url.rsplit("/", 1)[0]  # http://host:port ; URL = base/12/dev-clean.tar.gz
        got = L.fetch_subset("dev-clean", dl, mirrors=["http://127.0.0.1:1", base],
                             log=lambda s: None)
        n_requests = len(srv.requests)
        assert (got / ".complete").is_file() and not (dl / "dev-clean.tar.gz").exists()
        assert (dl / "LibriSpeech" / "SPEAKERS.TXT").is_file()
        L.fetch_subset("dev-clean", dl, mirrors=[base], log=lambda s: None)  # no-op
        assert len(srv.requests) == n_requests
    assert L.main(["prepare", "--libri_dir", str(dl / "LibriSpeech"), "--subsets", "dev-clean",
                   "--out_dir", str(tmp_path / "data")]) == 0
    assert len(read_data_dir(tmp_path / "data" / "dev_clean")) == 4


def test_extract_refuses_escaping_members(tmp_path: Path) -> None:
    tar = tmp_path / "evil.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(tarfile.TarError):
        L.extract_subset(tar, tmp_path / "out", "dev-clean", log=lambda s: None)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out" / "LibriSpeech").exists()
