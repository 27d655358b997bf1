"""The export CLI on bad input: one clear line on stderr, exit code 2, no bundle left behind.

Each case runs ``python -m export`` in a subprocess, as a user would, and fails before any
graph is exported (a few seconds each, mostly importing torch).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _no_bundle(folder: Path, name: str) -> None:
    assert not (folder / name).exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]  # no temp leftovers


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from training.checkpoints import save_checkpoint
    from training.model import AudioCLIP, AudioCLIPConfig

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", AudioCLIP(AudioCLIPConfig.tiny()))


def test_corrupted_checkpoint(tmp_path):
    bad = tmp_path / "model.pt"
    good = tmp_path / "good.pt"
    torch.save({"visual.conv1.weight": torch.zeros(2, 2)}, good)
    bad.write_bytes(good.read_bytes()[:200])  # a truncated zip archive
    proc = _cli(str(bad), "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    _assert_one_line_error(proc, "model.pt", "not a readable PyTorch checkpoint")
    _no_bundle(tmp_path, "bundle")


def test_checkpoint_of_another_model(tmp_path):
    ckpt = tmp_path / "resnet.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict(), ckpt)
    proc = _cli(str(ckpt), "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    _assert_one_line_error(proc, "resnet.pt", "not an AudioCLIP checkpoint")
    _no_bundle(tmp_path, "bundle")


def test_checkpoint_with_wrong_shapes(tmp_path, tiny_checkpoint):
    from training.checkpoints import read_checkpoint

    obj = read_checkpoint(tiny_checkpoint)
    obj["state_dict"]["text_projection"] = torch.zeros(3, 3)
    ckpt = tmp_path / "broken.pt"
    torch.save(obj, ckpt)
    proc = _cli(str(ckpt), "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    _assert_one_line_error(proc, "broken.pt", "text_projection")
    _no_bundle(tmp_path, "bundle")


def test_output_folder_under_a_file(tmp_path, tiny_checkpoint):
    """A destination that cannot be created (its parent is a file): refused before any work."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    proc = _cli(str(tiny_checkpoint), "--out", str(blocker / "bundle"), cwd=tmp_path)
    _assert_one_line_error(proc, "cannot write the bundle here")
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(tmp_path, tiny_checkpoint):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        proc = _cli(str(tiny_checkpoint), "--out", str(parent / "bundle"), cwd=tmp_path)
        _assert_one_line_error(proc, "cannot write the bundle here", "ermission")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


def test_existing_bundle_needs_force(tmp_path, tiny_checkpoint):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    proc = _cli(str(tiny_checkpoint), "--out", str(out), cwd=tmp_path)
    _assert_one_line_error(proc, "already exists", "--force")
    assert (out / "manifest.json").read_text() == "{}"


def test_missing_checkpoint_and_bad_arguments(tmp_path):
    proc = _cli(str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b"), cwd=tmp_path)
    _assert_one_line_error(proc, "nope.pt", "no such checkpoint")
    proc = _cli(str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b"), "--precision", "int4", cwd=tmp_path)
    _assert_one_line_error(proc, "invalid choice", "--help")
    proc = _cli(str(tmp_path / "nope.pt"), cwd=tmp_path)
    _assert_one_line_error(proc, "--out")
    _no_bundle(tmp_path, "b")


def test_missing_calibration_folder(tmp_path, tiny_checkpoint):
    proc = _cli(str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--calibration", str(tmp_path / "nothing"),
                cwd=tmp_path)
    _assert_one_line_error(proc, "calibration folder")
    _no_bundle(tmp_path, "b")


def test_help_explains(tmp_path):
    proc = _cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for needle in ("--precision", "--calibration", "--optimum-preset", "--strict", "--force", "fp16", "int8",
                   "manifest.json", "exit"):
        assert needle in proc.stdout, needle
