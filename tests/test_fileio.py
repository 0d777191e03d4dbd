"""Atomic writes and copies (espnet_prune.fileio): the old file or the complete new one."""

import os
import stat

import pytest

from espnet_prune import fileio


def _plain_open_mode(tmp_path) -> int:
    probe = tmp_path / "probe"
    probe.write_text("x")
    return stat.S_IMODE(probe.stat().st_mode)


def test_atomic_copy_copies_bytes_with_plain_open_permissions(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 10)
    os.chmod(src, 0o600)
    link = tmp_path / "link.bin"
    link.symlink_to(src)
    dst = tmp_path / "out" / "dst.bin"
    fileio.atomic_copy(link, dst)
    assert dst.read_bytes() == src.read_bytes() and not dst.is_symlink()
    assert stat.S_IMODE(dst.stat().st_mode) == _plain_open_mode(tmp_path)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["dst.bin"]  # no temp file left


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    dst = tmp_path / "result.txt"
    fileio.atomic_write_text(dst, "old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with fileio.atomic_path(dst) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert dst.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]
    with pytest.raises(FileNotFoundError):
        fileio.atomic_copy(tmp_path / "missing", dst)
    assert dst.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]


def test_export_copies_config_and_model(tmp_path):
    from espnet_prune.recipe.steps import export

    (tmp_path / "config.yaml").write_text("a: 1\n")
    (tmp_path / "5epoch.pth").write_bytes(b"\x00weights")
    (tmp_path / "valid.acc.best.pth").symlink_to(tmp_path / "5epoch.pth")
    export(tmp_path / "config.yaml", tmp_path / "valid.acc.best.pth", tmp_path / "final")
    assert (tmp_path / "final/model.pth").read_bytes() == b"\x00weights"
    assert (tmp_path / "final/config.yaml").read_text() == "a: 1\n"
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        export(tmp_path / "config.yaml", tmp_path / "missing.pth", tmp_path / "final2")


def test_torch_save_that_fails_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    from espnet_prune.task import ASRTask, PruneASRTask

    def fail_to_save(path):  # an object that fails halfway through pickling, like a kill
        torch.save({"model": {"w": torch.ones(4096)}, "hook": lambda: 0}, path)

    old = {"model": {"w": torch.arange(4096.0)}, "epoch": 3}
    plain_path, path = tmp_path / "plain.pth", tmp_path / "ckpt" / "checkpoint.pth"
    torch.save(old, plain_path)
    with pytest.raises(Exception):
        fail_to_save(plain_path)  # torch's own save: the previous file is lost
    with pytest.raises(RuntimeError):
        torch.load(plain_path)
    plain = torch.save
    with fileio.atomic_torch_saves():
        torch.save(old, path)
        with pytest.raises(Exception):
            fail_to_save(path)
    assert torch.save is plain
    back = torch.load(path)
    assert back["epoch"] == 3 and torch.equal(back["model"]["w"], old["model"]["w"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pth"]
    # ESPnet's training worker runs inside the context
    seen = []
    monkeypatch.setattr(ASRTask, "main_worker", classmethod(lambda cls, args: seen.append(torch.save is plain)))
    PruneASRTask.main_worker(None)
    assert seen == [False] and torch.save is plain
