"""The metrics that show CRA's mechanism, each on a constructed case with a known answer: D's
accuracy per region, the gradient-norm ratio, the feature gap, class borders, held BatchNorm
statistics, and the trainer's averaging of a diagnostic logged every few iterations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pseudo_label_fixtures import NUM_CLASSES, TinySegmenter, rare_store, step_context, target_batch
from torch import nn

from crossregion.config.schema import OptimConfig
from crossregion.engine.trainer import _LossWindow
from crossregion.eval.alignment import FeatureGap, touches_other_class
from crossregion.methods.cra import CRA, CRAConfig
from crossregion.methods.cra_losses import discriminator_region_accuracy
from crossregion.methods.entropy_min import EntropyMin, EntropyMinConfig
from crossregion.methods.pseudo_label_only import PseudoLabelOnly, PseudoLabelOnlyConfig
from crossregion.methods.self_training import gradient_norm_ratio


def test_discriminator_accuracy_counts_each_region_against_its_own_side():
    k = 3
    # Two pixels: D puts its mass on the trusted channels at pixel 0, on the untrusted at pixel 1.
    logits = torch.full((1, 2 * k, 1, 2), -10.0)
    logits[0, 1, 0, 0] = 10.0  # trusted channel of class 1
    logits[0, k + 2, 0, 1] = 10.0  # untrusted channel of class 2
    trusted = torch.tensor([[[True, False]]])
    untrusted = ~trusted
    assert [float(a) for a in discriminator_region_accuracy(logits, trusted, untrusted)] == [1.0, 1.0]
    # The regions swapped: D is wrong on both.
    assert [float(a) for a in discriminator_region_accuracy(logits, untrusted, trusted)] == [0.0, 0.0]
    # An empty region counts 0, not NaN.
    empty = torch.zeros_like(trusted)
    accuracy_trusted, accuracy_untrusted = discriminator_region_accuracy(logits, trusted, empty)
    assert float(accuracy_trusted) == 1.0 and float(accuracy_untrusted) == 0.0


def test_gradient_norm_ratio_of_known_gradients():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    x = torch.tensor([[3.0, 4.0]])
    out = model(x).sum()
    # d(out)/dw = x, norm 5; d(0.1 * out^2)/dw = 0.2 * out * x with out = 11: norm 11, ratio 2.2.
    ratio = gradient_norm_ratio(0.1 * out**2, out, model)
    assert float(ratio) == pytest.approx(2.2)
    assert model.weight.grad is None  # the diagnostic leaves the step's gradients alone
    zero = gradient_norm_ratio(out, out * 0.0, model)
    assert float(zero) == 0.0


def test_feature_gap_is_zero_for_identical_regions_and_grows_with_the_shift():
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(10, 10, dtype=torch.long)
    trusted = torch.zeros(10, 10, dtype=torch.bool)
    trusted[:, :5] = True
    base = torch.randn(4, 10, 10, generator=generator)
    same = FeatureGap(num_classes=2)
    # Untrusted cells carry exactly the trusted cells' features: the class means coincide.
    features = base.clone()
    features[:, :, 5:] = features[:, :, :5]
    same.add(features, labels, trusted)
    assert same.per_class(min_cells=10)[0] == pytest.approx(0.0, abs=1e-9)
    assert same.per_class(min_cells=10)[1] is None  # class 1 has no cell
    # Shift the untrusted cells by 3 within-class spreads along one axis.
    shifted = FeatureGap(num_classes=2)
    features = base.clone()
    features[:, :, 5:] = features[:, :, :5]
    trusted_features = features[:, :, :5].flatten(1)
    spread = (trusted_features - trusted_features.mean(dim=1, keepdim=True)).pow(2).sum(dim=0).mean().sqrt()
    features[0, :, 5:] += 3 * spread
    shifted.add(features, labels, trusted)
    assert shifted.per_class(min_cells=10)[0] == pytest.approx(3.0, rel=1e-6)


def test_feature_gap_needs_enough_cells_in_both_regions():
    gap = FeatureGap(num_classes=1)
    labels = torch.zeros(2, 2, dtype=torch.long)
    trusted = torch.tensor([[True, True], [True, False]])
    gap.add(torch.randn(3, 2, 2), labels, trusted)
    assert gap.per_class(min_cells=2) == [None]
    assert gap.per_class(min_cells=1)[0] is not None


def test_border_pixels_touch_another_valid_class():
    label = np.array(
        [
            [0, 0, 0, 0],
            [0, 1, 0, 0],
            [0, 0, 0, 255],
            [0, 0, 0, 0],
        ]
    )
    border = touches_other_class(label)
    expected = np.zeros_like(border)
    expected[0:3, 0:3] = True  # the 3x3 block around the single class-1 pixel
    assert (border == expected).all()  # ignore (255) is neither a border nor makes one


@pytest.mark.parametrize("method_name", ["cra", "pseudo_label_only", "entropy_min"])
def test_frozen_bn_statistics_stay_put_and_default_ones_move(tmp_path, method_name):
    classes = {
        "cra": (CRA, CRAConfig),
        "pseudo_label_only": (PseudoLabelOnly, PseudoLabelOnlyConfig),
        "entropy_min": (EntropyMin, EntropyMinConfig),
    }
    method_class, config_class = classes[method_name]
    store = rare_store(tmp_path / "store")
    for freeze, should_move in ((True, False), (False, True)):
        method = method_class(
            config_class(pseudo_label_store=str(store), freeze_bn_statistics=freeze), num_classes=NUM_CLASSES
        )
        torch.manual_seed(0)
        models = method.build_models(TinySegmenter())
        for model in models.values():
            model.train()
        batchnorm = models["segmenter"].feature_extractor[1]
        before = batchnorm.running_mean.clone()
        weight_before = batchnorm.weight.detach().clone()
        optimizers = method.build_optimizers(models, OptimConfig(lr=0.01))
        method.training_step(models, {"target": target_batch(seed=1)}, step_context(optimizers))
        assert (not torch.equal(before, batchnorm.running_mean)) == should_move
        # The affine parameters train either way.
        assert not torch.equal(weight_before, batchnorm.weight.detach())


def test_region_methods_log_the_gradient_ratio_on_the_diagnostic_iterations(tmp_path):
    store = rare_store(tmp_path / "store")
    method = EntropyMin(
        EntropyMinConfig(pseudo_label_store=str(store), diagnostics_period=2, entropy_weight=0.5),
        num_classes=NUM_CLASSES,
    )
    torch.manual_seed(0)
    models = method.build_models(TinySegmenter())
    optimizers = method.build_optimizers(models, OptimConfig(lr=0.01))
    first = method.training_step(models, {"target": target_batch(seed=1)}, step_context(optimizers, iteration=0))
    second = method.training_step(models, {"target": target_batch(seed=1)}, step_context(optimizers, iteration=1))
    assert "diag/grad_ratio" not in first
    assert math.isfinite(float(second["diag/grad_ratio"])) and float(second["diag/grad_ratio"]) > 0

    cra = CRA(CRAConfig(pseudo_label_store=str(store), diagnostics_period=1), num_classes=NUM_CLASSES)
    models = cra.build_models(TinySegmenter())
    losses = cra.training_step(
        models, {"target": target_batch(seed=2)}, step_context(cra.build_optimizers(models, OptimConfig(lr=0.01)))
    )
    assert float(losses["diag/grad_ratio"]) > 0
    for key in ("diag/disc_acc_trusted", "diag/disc_acc_untrusted"):
        assert 0.0 <= float(losses[key]) <= 1.0


def test_loss_window_averages_a_sparse_diagnostic_over_its_own_iterations():
    window = _LossWindow(torch.device("cpu"))
    window.add({"loss": torch.tensor(1.0)}, 1)
    window.add({"loss": torch.tensor(3.0), "diag/ratio": torch.tensor(0.5)}, 2)
    window.add({"loss": torch.tensor(2.0)}, 3)
    means = window.flush()
    assert means == {"loss": pytest.approx(2.0), "diag/ratio": pytest.approx(0.5)}


def test_inference_batches_keep_the_order_one_size_per_batch_and_the_pixel_budget():
    from crossregion.eval.inference import inference_batches

    sizes = [(8, 16)] * 5 + [(4, 8)] * 2 + [(8, 16)]
    samples = [{"image": torch.zeros(3, *size), "mask": torch.zeros(size), "id": i} for i, size in enumerate(sizes)]
    # 3 images of 8x16 fit 3 * 128 pixels; the fourth starts a new batch, as does a new size.
    batches = list(inference_batches(samples, max_pixels=3 * 128))
    assert [[sample["id"] for sample in batch] for batch in batches] == [[0, 1, 2], [3, 4], [5, 6], [7]]
    # An image larger than the budget still goes, alone.
    assert [len(batch) for batch in inference_batches(samples[:2], max_pixels=10)] == [1, 1]
    # The output size counts: the same image size with another label size is another batch.
    samples[1]["mask"] = torch.zeros(16, 32)
    assert [len(batch) for batch in inference_batches(samples[:3], max_pixels=10**6)] == [1, 1, 1]
