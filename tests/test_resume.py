"""Kill-and-resume: a run killed with SIGKILL mid-way and resumed ends with bit-identical weights."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crossregion.engine.checkpoint import REQUIRED_ENTRIES, load_checkpoint, periodic_checkpoints, write_checkpoint
from crossregion.files import save_torch_atomically

SCRIPT = Path(__file__).with_name("tiny_training.py")


def _run(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(run_dir), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _final_models(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "final.pth")["models"]["segmenter"]


@pytest.mark.parametrize("sampling", [[], ["--class-balanced"]], ids=["shuffled", "class_balanced"])
def test_sigkill_then_resume_gives_identical_weights(tmp_path, sampling):
    reference = _run(tmp_path / "reference", "--iters", "24", *sampling)
    # Slow data (20 ms per image) so the kill lands mid-run, after some checkpoints.
    killed_dir = tmp_path / "killed"
    killed = _run(killed_dir, "--iters", "24", "--sleep", "0.02", *sampling)
    deadline = time.monotonic() + 60
    while len(periodic_checkpoints(killed_dir)) < 2 and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    time.sleep(0.13)  # between checkpoints, possibly inside a write
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed_dir / "final.pth").exists()
    resumed = _run(killed_dir, "--iters", "24", "--resume", *sampling)
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert reference.wait(timeout=120) == 0, reference.stderr.read()

    expected, actual = _final_models(tmp_path / "reference"), _final_models(killed_dir)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert load_checkpoint(killed_dir / "final.pth")["iteration"] == 24
    # No temp file survives the kill: every write is temp + rename.
    assert not [p for p in killed_dir.iterdir() if p.name.startswith(".")]


def test_resume_with_another_config_names_the_difference(tmp_path):
    run_dir = tmp_path / "run"
    assert _run(run_dir, "--iters", "6").wait(timeout=60) == 0
    other = _run(run_dir, "--iters", "9", "--resume")
    assert other.wait(timeout=60) != 0
    assert "optim.stop_iter: 6 -> 9" in other.stderr.read()


def test_checkpoint_writes_are_atomic_and_pruned(tmp_path):
    entries = {entry: {} for entry in REQUIRED_ENTRIES}  # what load_checkpoint requires
    for iteration in (2, 4, 6):
        write_checkpoint({**entries, "format": "crossregion", "iteration": iteration}, tmp_path, keep_last=2)
    assert [p.name for p in periodic_checkpoints(tmp_path)] == ["model_iter000004.pth", "model_iter000006.pth"]
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 6

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_torch_atomically({"x": Unpicklable()}, tmp_path / "last.pth")
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 6  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="broken.pth"):
        load_checkpoint(path)
