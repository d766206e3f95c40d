"""engine.amp / engine.channels_last = auto: bf16 only where the hardware has it, recorded in the run."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from tiny_training import TinyDataset, TinySegmenter, tiny_config

from crossregion.app.train import build_method, run_training
from crossregion.engine import amp

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(False, ("none", False)), (True, ("bf16", True))])
def test_auto_follows_native_cpu_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: native)
    assert amp.resolve_precision(CPU, "auto", "auto") == expected


def test_explicit_choices_are_kept(monkeypatch):
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    assert amp.resolve_precision(CPU, "bf16", True) == ("bf16", True)
    assert amp.resolve_precision(CPU, "none", "auto") == ("none", False)


def test_probe_failure_means_no_native_bf16(monkeypatch):
    class NoProbe:
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(torch.ops, "mkldnn", NoProbe())
    assert amp.cpu_has_native_bf16() is False


def test_unresolved_auto_is_refused_by_autocast():
    with pytest.raises(ValueError, match="resolved"):
        amp.autocast(CPU, "auto")


def test_run_on_a_cpu_without_native_bf16_trains_in_fp32_and_records_it(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    cfg = tiny_config(iters=2, batch=4)
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, amp="auto", channels_last="auto"))
    seen = []
    original = amp.autocast
    monkeypatch.setattr(
        "crossregion.engine.trainer.autocast", lambda device, mode: seen.append(mode) or original(device, mode)
    )
    with caplog.at_level("INFO", logger="crossregion.app.train"):
        run_training(
            cfg,
            tmp_path,
            method=build_method(cfg),
            segmenter=TinySegmenter(),
            model_args={},
            datasets={"source": TinyDataset(augment=False, sleep=0.0)},
            device=CPU,
            resume=False,
        )
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["engine"]["amp"] == "none" and saved["engine"]["channels_last"] is False
    assert seen and set(seen) == {"none"}
    assert "engine.amp=none" in caplog.text and "native CPU bf16: False" in caplog.text


def test_engine_defaults_are_auto():
    from crossregion.config.schema import EngineConfig

    assert (EngineConfig().amp, EngineConfig().channels_last) == ("auto", "auto")
