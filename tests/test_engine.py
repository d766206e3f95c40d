"""Engine: poly schedule, loader order and resume, step checks, non-finite losses."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from tiny_training import NUM_CLASSES, TinyDataset, TinySegmenter, tiny_config

from crossregion.app.train import build_method, run_training, seed_everything
from crossregion.config.schema import OptimConfig
from crossregion.engine import trainer
from crossregion.engine.checkpoint import load_checkpoint
from crossregion.engine.optim import build_scheduler, build_segmenter_optimizer, cosine_factor, poly_factor
from crossregion.engine.trainer import (
    InfiniteLoader,
    NonFiniteLossError,
    ResumableClassBalancedSampler,
)
from crossregion.methods import UNAUGMENTED_TARGET
from crossregion.methods.base import frozen_copy
from crossregion.methods.source_only import SourceOnly


def test_poly_factor_matches_the_official_stop_value():
    assert poly_factor(0, 62_500, 0.9) == 1.0
    assert poly_factor(40_000, 62_500, 0.9) == pytest.approx(0.39872, abs=1e-5)  # docs/spec.md §1.6


@pytest.mark.parametrize("name, optimizer_class", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_segmenter_optimizer_keeps_head_multiplier_and_poly_schedule(name, optimizer_class):
    optim = OptimConfig(name=name, lr=1e-3, head_lr_mult=10.0, max_iters=10, poly_power=0.9)
    optimizer = build_segmenter_optimizer(TinySegmenter(), optim)
    scheduler = build_scheduler(optimizer, optim)
    assert isinstance(optimizer, optimizer_class)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-3, 1e-2])
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    factor = poly_factor(5, 10, 0.9)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-3 * factor, 1e-2 * factor])


def test_warmup_ramps_every_group_linearly_then_follows_poly():
    optim = OptimConfig(name="adam", lr=1e-3, head_lr_mult=10.0, max_iters=10, poly_power=0.9, warmup_iters=4)
    optimizer = build_segmenter_optimizer(TinySegmenter(), optim)
    scheduler = build_scheduler(optimizer, optim)
    lrs = []
    for _ in range(6):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for iteration, ramp in enumerate([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]):
        factor = ramp * poly_factor(iteration, 10, 0.9)
        assert lrs[iteration] == pytest.approx([1e-3 * factor, 1e-2 * factor])


def test_negative_warmup_is_refused():
    with pytest.raises(ValueError, match="optim.warmup_iters"):
        OptimConfig(max_iters=10, warmup_iters=-1)


def test_cosine_schedule_anneals_every_group_to_the_floor():
    """IAST's CosineAnnealingLR_with_Restart over one cycle: lr, half-way the mean, then 0.001 lr."""
    optim = OptimConfig(name="adam", lr=1e-3, head_lr_mult=10.0, max_iters=10, schedule="cosine")
    optimizer = build_segmenter_optimizer(TinySegmenter(), optim)
    scheduler = build_scheduler(optimizer, optim)
    lrs = []
    for _ in range(12):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx([1e-3, 1e-2])
    assert lrs[5] == pytest.approx([1e-3 * (1 + 0.001) / 2, 1e-2 * (1 + 0.001) / 2])
    assert lrs[10] == lrs[11] == pytest.approx([1e-6, 1e-5])
    assert cosine_factor(3, 10, 0.0) == pytest.approx(0.5 * (1 + math.cos(0.3 * math.pi)))
    with pytest.raises(ValueError, match="optim.schedule must be one of"):
        OptimConfig(schedule="step")


def test_unknown_optimizer_name_lists_the_choices():
    with pytest.raises(ValueError, match="optim.name must be one of.*'sgd', 'adam'"):
        OptimConfig(name="adamw")


def test_infinite_loader_resumes_mid_epoch():
    dataset = TinyDataset(augment=False, sleep=0.0)
    loader = InfiniteLoader(dataset, batch_size=4, num_workers=0, seed=3, name="source")
    order = [next(loader)["index"].tolist() for _ in range(5)]  # 2 batches per epoch: crosses epochs
    assert order[0] != order[2]  # a new permutation each epoch
    resumed = InfiniteLoader(dataset, batch_size=4, num_workers=0, seed=3, name="source")
    resumed.load_state_dict({"epoch": 1, "position": 1})
    assert [next(resumed)["index"].tolist() for _ in range(2)] == order[3:5]


def test_loader_smaller_than_a_batch_is_an_error():
    with pytest.raises(ValueError, match="fewer than one batch"):
        InfiniteLoader(TinyDataset(augment=False, sleep=0.0), batch_size=16, num_workers=0, seed=0, name="source")


class _NaNAfter(SourceOnly):
    """Source-only whose loss becomes NaN from iteration ``bad_iteration`` (0-based) on."""

    bad_iteration = 4

    def training_step(self, models, batches, ctx):
        losses = super().training_step(models, batches, ctx)
        if ctx.iteration >= self.bad_iteration:
            losses["loss/seg_src"] = losses["loss/seg_src"] * float("nan")
        return losses


def test_nan_loss_stops_naming_the_iteration_and_loss(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(iters=20, batch=2)
    seed_everything(cfg)
    with pytest.raises(NonFiniteLossError, match=r"iteration=5! loss 'loss/seg_src'"):
        run_training(
            cfg,
            tmp_path,
            method=_NaNAfter(cfg.method, num_classes=NUM_CLASSES),
            segmenter=TinySegmenter(),
            model_args={},
            datasets={"source": TinyDataset(augment=False, sleep=0)},
            device=torch.device("cpu"),
            resume=False,
        )
    assert not (tmp_path / "final.pth").exists()


class _WithCopies(SourceOnly):
    """Source-only with a frozen teacher and an unfrozen copy (as ProDA's EMA in train mode);
    records the model modes and batch names of every step and the datasets ``on_train_start`` gets."""

    needs_unaugmented_target = True

    def __init__(self, cfg, *, num_classes):
        super().__init__(cfg, num_classes=num_classes)
        self.modes, self.start_datasets = [], None

    def build_models(self, segmenter):
        return {"segmenter": segmenter, "teacher": frozen_copy(segmenter), "follower": frozen_copy(segmenter)}

    def frozen_models(self):
        return ("teacher",)

    def on_train_start(self, models, datasets):
        self.start_datasets = sorted(datasets)

    def training_step(self, models, batches, ctx):
        self.modes.append(({name: model.training for name, model in models.items()}, sorted(batches)))
        return super().training_step(models, batches, ctx)


def test_frozen_models_stay_in_eval_mode_and_start_datasets_reach_on_train_start(tmp_path):
    cfg = tiny_config(iters=3, batch=2)
    seed_everything(cfg)
    method = _WithCopies(cfg.method, num_classes=NUM_CLASSES)
    run_training(
        cfg,
        tmp_path,
        method=method,
        segmenter=TinySegmenter(),
        model_args={},
        datasets={
            "source": TinyDataset(augment=False, sleep=0),
            UNAUGMENTED_TARGET: TinyDataset(augment=False, sleep=0),
        },
        device=torch.device("cpu"),
        resume=False,
    )
    assert method.start_datasets == ["source", UNAUGMENTED_TARGET]
    # The un-augmented set reaches on_train_start only: no loader draws batches from it.
    assert method.modes == [({"segmenter": True, "teacher": False, "follower": True}, ["source"])] * 3


def test_a_frozen_model_must_be_known_and_without_optimiser():
    models = {"segmenter": TinySegmenter(), "teacher": TinySegmenter()}
    optimizers = {"segmenter": build_segmenter_optimizer(models["segmenter"], OptimConfig())}
    with pytest.raises(ValueError, match=r"with an optimiser: \['segmenter'\]"):
        trainer.set_train_modes(models, optimizers, ["segmenter"])
    with pytest.raises(ValueError, match=r"unknown: \['ema'\]"):
        trainer.set_train_modes(models, optimizers, ["ema"])
    trainer.set_train_modes(models, optimizers, ["teacher"])
    assert models["segmenter"].training and not models["teacher"].training


def test_existing_run_needs_resume(tmp_path):
    cfg = tiny_config(iters=3, batch=2)

    def run(resume: bool) -> None:
        seed_everything(cfg)
        run_training(
            cfg,
            tmp_path,
            method=build_method(cfg),
            segmenter=TinySegmenter(),
            model_args={},
            datasets={"source": TinyDataset(augment=False, sleep=0)},
            device=torch.device("cpu"),
            resume=resume,
        )

    run(False)
    with pytest.raises(ValueError, match="--resume"):
        run(False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines and "loss/seg_src" in lines[-1]


def test_method_without_its_data_is_rejected():
    cfg = tiny_config(iters=3, batch=2)
    with pytest.raises(ValueError, match="data.source"):
        build_method(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=None)))


def test_class_balanced_loader_resumes_mid_epoch():
    dataset = TinyDataset(augment=False, sleep=0.0)
    presence = np.eye(10, NUM_CLASSES, dtype=bool)  # images 0..3 hold one class each, the rest none

    def loader() -> InfiniteLoader:
        sampler = ResumableClassBalancedSampler(presence, samples_per_epoch=8, seed=3, sub_epoch_size=4)
        return InfiniteLoader(dataset, batch_size=4, num_workers=0, seed=3, name="source", sampler=sampler)

    first = loader()  # 2 batches per epoch
    for _ in range(3):
        next(first)
    state = copy.deepcopy(first.state_dict())  # epoch 1, position 1: mid-epoch, after a new draw list
    order = [next(first)["index"].tolist() for _ in range(3)]
    assert set(sum(order, [])) <= {0, 1, 2, 3}  # only images that hold a class are drawn
    resumed = loader()
    resumed.load_state_dict(state)
    assert [next(resumed)["index"].tolist() for _ in range(3)] == order


def test_class_balanced_ranks_split_one_draw_list(monkeypatch):
    presence = np.eye(10, NUM_CLASSES, dtype=bool)
    single = list(ResumableClassBalancedSampler(presence, samples_per_epoch=100, seed=5))
    shares = []
    for rank in range(2):
        monkeypatch.setattr(trainer, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(trainer, "get_world_size", lambda: 2)
        shares.append(list(ResumableClassBalancedSampler(presence, samples_per_epoch=100, seed=5)))
    assert len(shares[0]) == len(shares[1]) == len(single) // 2
    assert shares[0] == single[0::2] and shares[1] == single[1::2]


def test_class_balanced_training_runs_and_caches_class_presence(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(iters=3, batch=2, class_balanced=True)
    seed_everything(cfg)
    final = run_training(
        cfg,
        tmp_path,
        method=build_method(cfg),
        segmenter=TinySegmenter(),
        model_args={},
        datasets={"source": TinyDataset(augment=False, sleep=0)},
        device=torch.device("cpu"),
        resume=False,
    )
    cache = json.loads((tmp_path / "class_presence_source.json").read_text())
    assert cache["classes"] == [list(range(NUM_CLASSES))] * 10  # random 16x16 masks hold every class
    data_state = load_checkpoint(final)["data_state"]["source"]
    assert data_state["position"] == 3 and isinstance(data_state["sampler"]["generator"], torch.Tensor)
