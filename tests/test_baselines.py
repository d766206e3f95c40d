"""Table-3 baselines (pseudo-label-only, entropy minimisation) and self-distillation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pseudo_label_fixtures import NUM_CLASSES, TinySegmenter, rare_store, step_context, target_batch

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
    baseline = PseudoLabelOnly(PseudoLabelOnlyConfig(pseudo_label_store=store, rare_factor=1.0), num_classes=NUM_CLASSES)
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
    plain, _ = one_step(PseudoLabelOnly(PseudoLabelOnlyConfig(pseudo_label_store=store), num_classes=NUM_CLASSES), batch)
    zero_weight, _ = one_step(EntropyMin(EntropyMinConfig(pseudo_label_store=store, entropy_weight=0.0),
                                         num_classes=NUM_CLASSES), batch)
    weighted, losses = one_step(EntropyMin(EntropyMinConfig(pseudo_label_store=store, entropy_weight=1.0),
                                           num_classes=NUM_CLASSES), batch)
    assert set(losses) == {"loss/seg_trusted", "loss/ent_untrusted"}
    assert losses["loss/ent_untrusted"] > 0
    for a, b in zip(plain.parameters(), zero_weight.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), weighted.parameters()))


def test_self_distill_trains_on_every_pseudo_labelled_pixel(tmp_path):
    method = SelfDistill(SelfDistillConfig(pseudo_label_store=str(rare_store(tmp_path / "store"))), num_classes=NUM_CLASSES)
    batch = target_batch(seed=5)
    torch.manual_seed(0)
    reference = TinySegmenter()
    expected = F.cross_entropy(
        F.interpolate(reference(batch["image"])["logits"], size=(8, 12), mode="bilinear", align_corners=True),
        batch["pseudo_mask"], ignore_index=255,
    )
    _, losses = one_step(method, batch)
    assert set(losses) == {"loss/seg_pseudo"}
    assert torch.allclose(losses["loss/seg_pseudo"], expected)


def test_presets_load():
    for name in ("pseudo_label_only", "entropy_min", "demo_pseudo_label_only", "demo_entropy_min"):
        cfg = load_config(name)
        assert cfg.method.entropy_threshold == 0.01 and cfg.method.bn_momentum == 0.19, name
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
    with pytest.raises(ValueError, match="pseudo_label_store"):
        SelfDistill(SelfDistillConfig(), num_classes=NUM_CLASSES)
