"""Every registered method is complete: presets, a speed row, documentation, and a training step.

Walks the method registry, so a method added without one of these fails here by name.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from crossregion.config import available_presets
from crossregion.config.io import load_raw
from crossregion.methods.base import METHODS

REPO = Path(__file__).resolve().parents[1]


def bench_method_steps():
    spec = importlib.util.spec_from_file_location("method_steps", REPO / "bench" / "method_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def presets_of(method: str) -> list[str]:
    return [name for name in available_presets() if load_raw(name).get("method", {}).get("name") == method]


def mentioned(method: str, text: str) -> bool:
    return re.search(rf"`{re.escape(method)}`", text) is not None


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_has_presets_a_speed_row_and_documentation(method):
    presets = presets_of(method)
    assert [p for p in presets if p.startswith("demo_")], f"{method}: no demo_* preset"
    assert [p for p in presets if not p.startswith("demo_")], f"{method}: no preset at the paper's scale"
    rows = {row for row, _ in bench_method_steps().METHOD_PRESETS}
    assert method in rows, f"{method}: no row in bench/method_steps.py's METHOD_PRESETS"
    assert mentioned(method, (REPO / "README.md").read_text()), f"{method}: not named in README.md"
    docs = [path.name for path in (REPO / "docs").glob("*.md") if mentioned(method, path.read_text())]
    assert docs, f"{method}: no page in docs/ names it"


@pytest.mark.parametrize("row", bench_method_steps().METHOD_PRESETS, ids=lambda row: row[0])
def test_every_demo_preset_trains_two_steps(row):
    """Two training steps of each method's demo preset on random tiny batches (bench/method_steps.py's
    own path: a fresh model stands in for the checkpoint a stage starts from)."""
    name, preset = row
    args = argparse.Namespace(threads=1, amp="none", channels_last=False, quick=True, warmup=0, iters=2)
    result = bench_method_steps().measure(preset, args)
    assert result["seconds_per_iter"] > 0
    assert any(key.startswith("loss/") for key in result["loss_keys"]), result["loss_keys"]
