"""Table-3 baselines (pseudo-label-only, entropy minimisation) and self-distillation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pseudo_label_fixtures import NUM_CLASSES, TinySegmenter, rare_store, step_context, target_batch, write_store

from crossregion.config.io import load_config
from crossregion.config.schema import OptimConfig
from crossregion.methods.cra import CRA, CRAConfig
from crossregion.methods.entropy_min import EntropyMin, EntropyMinConfig, masked_entropy_loss
from crossregion.methods.pseudo_label_only import PseudoLabelOnly, PseudoLabelOnlyConfig
from crossregion.methods.self_distill import SelfDistill, SelfDistillConfig
from crossregion.methods.self_training import trusted_cross_entropy

OPTIM = OptimConfig(lr=0.05)


def one_step(method, batch, seed=0):
    torch.manual_seed(seed)
    models = method.build_models(TinySegmenter())
    losses = method.training_step(models, {"target": batch}, step_context(method.build_optimizers(models, OPTIM)))
    return models["segmenter"], losses


def test_pseudo_label_only_uses_the_same_masks_as_cra_and_trains_on_trusted_pixels_only(tmp_path):
    store = str(rare_store(tmp_path / "store"))
    baseline = PseudoLabelOnly(PseudoLabelOnlyConfig(pseudo_label_store=store), num_classes=NUM_CLASSES)
    cra = CRA(CRAConfig(pseudo_label_store=store), num_classes=NUM_CLASSES)
    batch = target_batch(seed=3)
    for ours, theirs in zip(baseline.region_masks(batch), cra.region_masks(batch)):
        assert torch.equal(ours, theirs)

    # Changing the pseudo label of untrusted pixels changes nothing: they carry no loss. (Without
    # rare-class scaling, since a new label could change a pixel's threshold.)
    plain_store = str(write_store(tmp_path / "plain", ["big"], size=(64, 64), rare_factor=1.0))
    baseline = PseudoLabelOnly(PseudoLabelOnlyConfig(pseudo_label_store=plain_store), num_classes=NUM_CLASSES)
    _, untrusted = baseline.region_masks(batch)
    relabelled_mask = torch.where(untrusted, (batch["pseudo_mask"] + 1) % NUM_CLASSES, batch["pseudo_mask"])
    relabelled = dict(batch, pseudo_mask=relabelled_mask)
    assert untrusted.any() and not torch.equal(relabelled_mask, batch["pseudo_mask"])
    segmenter_a, losses_a = one_step(baseline, batch)
    segmenter_b, losses_b = one_step(baseline, relabelled)
    assert set(losses_a) == {"loss/seg_trusted"}
    assert torch.equal(losses_a["loss/seg_trusted"], losses_b["loss/seg_trusted"])
    for a, b in zip(segmenter_a.parameters(), segmenter_b.parameters()):
        assert torch.equal(a, b)


def test_trusted_cross_entropy_is_the_mean_over_trusted_pixels_at_temperature():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 5, 6, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (2, 5, 6), generator=generator)
    trusted = torch.rand(2, 5, 6, generator=generator) < 0.5
    per_pixel = F.cross_entropy(logits / 1.8, labels, reduction="none")
    assert torch.allclose(trusted_cross_entropy(logits, labels, trusted, 1.8), per_pixel[trusted].mean())
    assert trusted_cross_entropy(logits, labels, torch.zeros_like(trusted), 1.8) == 0


def test_per_image_weighting_averages_each_images_trusted_mean():
    """ "per_image" = the official 1 crop per GPU with DDP averaging: mean over images of each
    image's mean over its trusted pixels; an image without trusted pixels counts as 0 out of N."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, NUM_CLASSES, 5, 6, generator=generator, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (3, 5, 6), generator=generator)
    trusted = torch.rand(3, 5, 6, generator=generator) < 0.5
    trusted[0] = False
    trusted[0, 0, :2] = True  # image 0: 2 trusted pixels, the others about 15
    per_pixel = F.cross_entropy(logits / 1.8, labels, reduction="none")
    image_means = torch.stack([per_pixel[i][trusted[i]].mean() for i in range(3)])
    per_image = trusted_cross_entropy(logits, labels, trusted, 1.8, "per_image")
    pixel = trusted_cross_entropy(logits, labels, trusted, 1.8, "pixel")
    assert torch.allclose(per_image, image_means.mean())
    assert torch.allclose(pixel, per_pixel[trusted].mean())
    assert (per_image - pixel).abs() > 1e-3  # the two weightings differ when the counts differ
    # No trusted pixel in image 2: 0 for it, still divided by all 3 images; finite gradients.
    trusted[2] = False
    empty = trusted_cross_entropy(logits, labels, trusted, 1.8, "per_image")
    assert torch.allclose(empty, image_means[:2].sum() / 3)
    empty.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[2] == 0).all()
    assert trusted_cross_entropy(logits, labels, torch.zeros_like(trusted), 1.8, "per_image") == 0
    with pytest.raises(ValueError, match="weighting"):
        trusted_cross_entropy(logits, labels, trusted, 1.8, "batch")


@pytest.mark.parametrize("weighting", ["per_image", "pixel"])
def test_cra_and_both_baselines_weigh_the_trusted_ce_by_the_config_field(tmp_path, weighting):
    store = str(rare_store(tmp_path / "store"))
    batch = target_batch(num_images=3, seed=6)
    batch["entropy"][0, 1:] = torch.where(batch["entropy"][0, 1:] == -1, -1.0, 0.05)  # image 0: one row can be trusted
    torch.manual_seed(0)
    logits = F.interpolate(TinySegmenter()(batch["image"])["logits"], size=(8, 12), mode="bilinear", align_corners=True)
    methods = [
        PseudoLabelOnly(
            PseudoLabelOnlyConfig(pseudo_label_store=store, trusted_ce_weighting=weighting), num_classes=NUM_CLASSES
        ),
        EntropyMin(EntropyMinConfig(pseudo_label_store=store, trusted_ce_weighting=weighting), num_classes=NUM_CLASSES),
        CRA(CRAConfig(pseudo_label_store=store, trusted_ce_weighting=weighting), num_classes=NUM_CLASSES),
    ]
    trusted, _ = methods[0].region_masks(batch)
    assert len(set(trusted.flatten(1).sum(1).tolist())) == 3  # unequal trusted counts
    expected = trusted_cross_entropy(logits, batch["pseudo_mask"], trusted, 1.8, weighting)
    other = trusted_cross_entropy(
        logits, batch["pseudo_mask"], trusted, 1.8, {"per_image": "pixel", "pixel": "per_image"}[weighting]
    )
    assert (expected - other).abs() > 1e-3
    for method in methods:
        _, losses = one_step(method, batch)
        assert torch.allclose(losses["loss/seg_trusted"], expected, rtol=1e-5), type(method).__name__


def test_masked_entropy_loss_matches_a_direct_computation_and_stays_finite():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, NUM_CLASSES, 4, 4, generator=generator)
    mask = torch.rand(2, 4, 4, generator=generator) < 0.5
    probs = logits.softmax(1)
    entropy = -(probs * probs.log()).sum(1) / math.log(NUM_CLASSES)
    assert torch.allclose(masked_entropy_loss(logits, mask), (entropy * mask).sum() / mask.numel())
    # Saturated logits (probabilities that underflow to 0) still give a finite gradient.
    saturated = torch.tensor([[[[500.0]], [[-500.0]], [[0.0]], [[0.0]]]], requires_grad=True)
    masked_entropy_loss(saturated, torch.ones(1, 1, 1, dtype=torch.bool)).backward()
    assert torch.isfinite(saturated.grad).all()


def test_entropy_min_adds_the_untrusted_entropy_term_to_pseudo_label_training(tmp_path):
    store = str(rare_store(tmp_path / "store"))
    batch = target_batch(seed=4)
    plain, _ = one_step(
        PseudoLabelOnly(PseudoLabelOnlyConfig(pseudo_label_store=store), num_classes=NUM_CLASSES), batch
    )
    zero_weight, _ = one_step(
        EntropyMin(EntropyMinConfig(pseudo_label_store=store, entropy_weight=0.0), num_classes=NUM_CLASSES), batch
    )
    weighted, losses = one_step(
        EntropyMin(EntropyMinConfig(pseudo_label_store=store, entropy_weight=1.0), num_classes=NUM_CLASSES), batch
    )
    assert set(losses) == {"loss/seg_trusted", "loss/ent_untrusted"}
    assert losses["loss/ent_untrusted"] > 0
    for a, b in zip(plain.parameters(), zero_weight.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), weighted.parameters()))


def test_self_distill_trains_on_every_pseudo_labelled_pixel(tmp_path):
    method = SelfDistill(
        SelfDistillConfig(pseudo_label_store=str(rare_store(tmp_path / "store"))), num_classes=NUM_CLASSES
    )
    batch = target_batch(seed=5)
    torch.manual_seed(0)
    reference = TinySegmenter()
    expected = F.cross_entropy(
        F.interpolate(reference(batch["image"])["logits"], size=(8, 12), mode="bilinear", align_corners=True),
        batch["pseudo_mask"],
        ignore_index=255,
    )
    _, losses = one_step(method, batch)
    assert set(losses) == {"loss/seg_pseudo"}
    assert torch.allclose(losses["loss/seg_pseudo"], expected)


def test_presets_load():
    for name in ("pseudo_label_only", "entropy_min", "demo_pseudo_label_only", "demo_entropy_min"):
        cfg = load_config(name)
        assert cfg.method.entropy_threshold is None and cfg.method.bn_momentum == 0.19, name
    # One trusted-CE weighting for CRA and its Table-3 baselines: the official per-image one.
    for name in (
        "cra",
        "cra_paper",
        "pseudo_label_only",
        "entropy_min",
        "demo_cra",
        "demo_cra_paper",
        "demo_pseudo_label_only",
        "demo_entropy_min",
    ):
        assert load_config(name).method.trusted_ce_weighting == "per_image", name
    for name in ("self_distill", "demo_self_distill"):
        cfg = load_config(name)
        assert cfg.method.name == "self_distill" and cfg.model.init_checkpoint is None, name
    assert load_config("self_distill").optim.lr == 5e-4 and load_config("self_distill").optim.stop_iter == 20000


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="method.entropy_weight"):
        EntropyMinConfig(entropy_weight=-1.0)
    with pytest.raises(ValueError, match="method.rare_factor"):
        PseudoLabelOnlyConfig(rare_factor=0.0)
    with pytest.raises(ValueError, match="method.update_mode"):
        CRAConfig(update_mode="twice")
    with pytest.raises(ValueError, match="method.trusted_ce_weighting"):
        PseudoLabelOnlyConfig(trusted_ce_weighting="batch")
    with pytest.raises(ValueError, match="pseudo_label_store"):
        SelfDistill(SelfDistillConfig(), num_classes=NUM_CLASSES)
