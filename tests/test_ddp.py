"""Two Gloo processes reach the weights of one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from crossregion.engine.checkpoint import load_checkpoint

SCRIPT = Path(__file__).with_name("tiny_training.py")
# float32 gradients summed in another order (per-rank means, then the all-reduce average).
TOLERANCE = 1e-5


def test_two_gloo_processes_match_one_process(tmp_path):
    common = ["--iters", "6", "--batch", "4", "--no-augment"]
    single = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "single"), *common], capture_output=True, text=True, timeout=120
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            str(SCRIPT),
            str(tmp_path / "ddp"),
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    expected = load_checkpoint(tmp_path / "single" / "final.pth")["models"]["segmenter"]
    actual = load_checkpoint(tmp_path / "ddp" / "final.pth")
    assert len(actual["rng"]) == 2  # one RNG state per rank
    for key, value in expected.items():
        torch.testing.assert_close(actual["models"]["segmenter"][key], value, atol=TOLERANCE, rtol=TOLERANCE)
    # The runs trained: the weights moved away from the (seeded, identical) initialisation.
    first = load_checkpoint(tmp_path / "single" / "model_iter000003.pth")["models"]["segmenter"]
    assert not torch.equal(first["classifier.weight"], expected["classifier.weight"])
