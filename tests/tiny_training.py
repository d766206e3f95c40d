"""A tiny source-only run through ``app.train.run_training``, for the resume and DDP tests.

Run as a script (also under torchrun): ``python tests/tiny_training.py RUN_DIR [--resume]
[--iters N] [--batch B] [--no-augment] [--sleep S] [--class-balanced]``. Deterministic on CPU: one thread,
``num_workers=0``; the random flip draws from torch's global RNG, so resume must restore it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from crossregion.app.train import build_method, run_training, seed_everything
from crossregion.config.schema import (
    DataConfig,
    DatasetSpec,
    EngineConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
)
from crossregion.data.labels import LabelSet
from crossregion.dist import init_distributed, shutdown_distributed
from crossregion.methods.source_only import SourceOnlyConfig

NUM_CLASSES = 4


class TinySegmenter(nn.Module):
    """Two convolutions, no BatchNorm (so per-rank batches give the same gradients as one batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, NUM_CLASSES, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.feature_extractor(images)
        return {"features": features, "logits": self.classifier(features)}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.feature_extractor.parameters()), "head": list(self.classifier.parameters())}


class TinyDataset(torch.utils.data.Dataset):
    """10 fixed random 16x16 samples; optional random flip from the global RNG; optional delay.

    Has what ``compute_class_presence`` reads (``names``, ``label_set``, ``load_label``), for
    the class-balanced sampler.
    """

    label_set = LabelSet(
        name="tiny",
        class_names=tuple(f"class{c}" for c in range(NUM_CLASSES)),
        palette=((0, 0, 0),) * NUM_CLASSES,
        id_to_train_id={c: c for c in range(NUM_CLASSES)},
    )
    num_classes = NUM_CLASSES

    def __init__(self, *, augment: bool, sleep: float) -> None:
        generator = torch.Generator().manual_seed(123)
        self.images = torch.randn(10, 3, 16, 16, generator=generator)
        self.masks = torch.randint(0, NUM_CLASSES, (10, 16, 16), generator=generator)
        self.names = [f"{index:03d}" for index in range(len(self.images))]
        self.augment, self.sleep = augment, sleep

    def load_label(self, index: int) -> np.ndarray:
        return self.masks[index].numpy().astype(np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        time.sleep(self.sleep)
        image, mask = self.images[index], self.masks[index]
        if self.augment and torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return {"image": image, "mask": mask, "name": self.names[index], "index": index}


def tiny_config(iters: int, batch: int, class_balanced: bool = False) -> ExperimentConfig:
    return ExperimentConfig(
        method=SourceOnlyConfig(),
        data=DataConfig(source=DatasetSpec(name="tiny", root="-", class_balanced=class_balanced), batch_size=batch),
        model=ModelConfig(backbone="tiny", num_classes=NUM_CLASSES),
        optim=OptimConfig(lr=0.05, max_iters=iters + 10, stop_iter=iters),
        engine=EngineConfig(
            device="cpu", amp="none", channels_last=False, checkpoint_period=3, keep_last=2, log_period=5, seed=7
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--class-balanced", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = tiny_config(args.iters, args.batch, args.class_balanced)
    device = torch.device("cpu")
    init_distributed(device)
    try:
        seed_everything(cfg)
        run_training(
            cfg,
            args.run_dir,
            method=build_method(cfg),
            segmenter=TinySegmenter(),
            model_args={"backbone": "tiny", "num_classes": NUM_CLASSES},
            datasets={"source": TinyDataset(augment=not args.no_augment, sleep=args.sleep)},
            device=device,
            resume=args.resume,
        )
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
