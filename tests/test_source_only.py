"""source_only: one step trains the segmenter on source CE at label resolution."""

from __future__ import annotations

import torch
from tiny_training import NUM_CLASSES, TinySegmenter

from crossregion.config.schema import OptimConfig
from crossregion.engine.amp import build_grad_scaler
from crossregion.engine.trainer import StepContext
from crossregion.methods import METHODS
from crossregion.methods.losses import segmentation_cross_entropy
from crossregion.methods.source_only import SourceOnlyConfig


def test_cross_entropy_upsamples_logits_to_the_label():
    logits = torch.zeros(1, NUM_CLASSES, 2, 2)
    mask = torch.full((1, 8, 8), 255)
    mask[0, 0, 0] = 1
    loss = segmentation_cross_entropy(logits, mask)
    assert torch.isclose(loss, torch.log(torch.tensor(float(NUM_CLASSES))))  # uniform logits, one pixel


def test_one_step_reduces_the_loss_and_returns_detached_losses():
    torch.manual_seed(0)
    method = METHODS.get("source_only")(SourceOnlyConfig(), num_classes=NUM_CLASSES)
    segmenter = TinySegmenter()
    models = method.build_models(segmenter)
    optimizers = method.build_optimizers(models, OptimConfig(lr=0.05))
    assert optimizers["segmenter"].param_groups[1]["lr"] == 0.05 * 10  # head at x10
    batch = {"source": {"image": torch.randn(2, 3, 8, 8), "mask": torch.randint(0, NUM_CLASSES, (2, 8, 8))}}
    losses = []
    for iteration in range(3):
        ctx = StepContext(
            iteration=iteration,
            device=torch.device("cpu"),
            optimizers=optimizers,
            scaler=build_grad_scaler(torch.device("cpu"), "none"),
        )
        step_losses = method.training_step(models, batch, ctx)
        assert ctx.stepped == ["segmenter"]
        assert set(step_losses) == {"loss/seg_src"} and not step_losses["loss/seg_src"].requires_grad
        losses.append(step_losses["loss/seg_src"])
    assert losses[-1] < losses[0]
