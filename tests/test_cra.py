"""CRA: region masks, rare-class scaling, the step's gradient flow, edge cases, store validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import write_cityscapes
from pseudo_label_fixtures import (
    NUM_CLASSES,
    TinySegmenter,
    rare_store,
    step_context,
    target_batch,
    write_store,
)

from crossregion.app.train import build_train_datasets
from crossregion.config.io import load_config
from crossregion.config.schema import (
    DataConfig,
    DatasetSpec,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
)
from crossregion.data.datasets import build_dataset
from crossregion.data.pseudo_labelled import PseudoLabelledDataset
from crossregion.data.pseudo_labels import PseudoLabelStore
from crossregion.data.transforms import Compose, RandomCrop, RandomHorizontalFlip
from crossregion.engine.trainer import StepContext
from crossregion.methods.cra import CRA, CRAConfig

RARE_CLASS = NUM_CLASSES - 1


def build_cra(store, **fields):
    method = CRA(CRAConfig(pseudo_label_store=str(store), **fields), num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    models = method.build_models(TinySegmenter())
    optimizers = method.build_optimizers(models, OptimConfig(lr=0.01))
    return method, models, optimizers


def test_masks_agree_with_a_direct_computation(tmp_path):
    method, _, _ = build_cra(rare_store(tmp_path / "store"))
    batch = target_batch(num_images=2, size=(6, 9), seed=3)
    trusted, untrusted = method.region_masks(batch)
    assert trusted.dtype == torch.bool and untrusted.dtype == torch.bool
    entropy, labels = batch["entropy"].numpy(), batch["pseudo_mask"].numpy()
    for index in np.ndindex(entropy.shape):
        e, label = float(entropy[index]), int(labels[index])
        if e == -1.0:
            expected = (False, False)  # padding: neither region
        else:
            scaled = e * (0.5 if label == RARE_CLASS else 1.0)
            expected = (scaled <= 0.01, scaled > 0.01)
        assert (bool(trusted[index]), bool(untrusted[index])) == expected, index
    assert not (trusted & untrusted).any()
    assert (trusted | untrusted).sum() == (batch["entropy"] != -1).sum()


def test_rare_class_factor_changes_exactly_the_rare_class_pixels(tmp_path):
    scaled_method, _, _ = build_cra(rare_store(tmp_path / "store"))
    plain_store = write_store(tmp_path / "plain", ["big"], size=(64, 64), rare_factor=1.0)
    plain_method, _, _ = build_cra(plain_store)
    assert scaled_method.class_factors.tolist() == [1.0, 1.0, 1.0, 0.5]
    batch = target_batch(num_images=4, size=(8, 8), seed=5)
    trusted_scaled, untrusted_scaled = scaled_method.region_masks(batch)
    trusted_plain, untrusted_plain = plain_method.region_masks(batch)
    changed = (trusted_scaled != trusted_plain) | (untrusted_scaled != untrusted_plain)
    is_rare = batch["pseudo_mask"] == RARE_CLASS
    entropy = batch["entropy"]
    # Exactly the rare-class pixels with λ < e <= λ / 0.5 move from untrusted to trusted.
    expected = is_rare & (entropy > 0.01) & (entropy <= 0.02)
    assert expected.any()
    assert torch.equal(changed, expected)
    assert trusted_scaled[changed].all() and untrusted_plain[changed].all()


def test_zero_trusted_batch_gives_finite_losses_and_a_finite_update(tmp_path):
    method, models, optimizers = build_cra(rare_store(tmp_path / "store"))
    batch = target_batch(seed=1)
    batch["entropy"] = torch.where(batch["entropy"] == -1, batch["entropy"], torch.full_like(batch["entropy"], 0.05))
    trusted, untrusted = method.region_masks(batch)
    assert not trusted.any() and untrusted.any()
    losses = method.training_step(models, {"target": batch}, step_context(optimizers))
    assert set(losses) == {
        "loss/seg_trusted",
        "loss/adv_untrusted",
        "loss/disc_trusted",
        "loss/disc_untrusted",
        "diag/disc_acc_trusted",
        "diag/disc_acc_untrusted",
    }
    assert float(losses["diag/disc_acc_trusted"]) == 0.0  # no trusted pixel: counted 0, not NaN
    assert losses["loss/seg_trusted"] == 0
    assert all(torch.isfinite(value) for value in losses.values())
    assert all(torch.isfinite(p).all() for model in models.values() for p in model.parameters())


class RecordingContext(StepContext):
    """Checks, at each optimiser step, which models hold gradients; snapshots the segmenter."""

    def __init__(self, models, optimizers):
        super().__init__(
            iteration=0,
            device=torch.device("cpu"),
            optimizers=optimizers,
            scaler=torch.amp.GradScaler("cpu", enabled=False),
        )
        self.models = models
        self.checked = []

    def step(self, name):
        segmenter, discriminator = self.models["segmenter"], self.models["discriminator"]
        if name == "segmenter":
            # The generator's losses (self-training + adversarial) reach no D parameter.
            assert all(p.grad is None for p in discriminator.parameters())
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in segmenter.parameters())
            super().step(name)
            self.segmenter_after_step = [p.detach().clone() for p in segmenter.parameters()]
        else:
            # D's loss is on detached features: no gradient in G, and D's step leaves G unchanged.
            assert all(p.grad is None for p in segmenter.parameters())
            assert all(p.grad is not None for p in discriminator.parameters())
            super().step(name)
            for before, after in zip(self.segmenter_after_step, segmenter.parameters()):
                assert torch.equal(before, after)
        self.checked.append(name)


def test_generator_loss_never_reaches_d_and_d_step_leaves_g_unchanged(tmp_path):
    method, models, optimizers = build_cra(rare_store(tmp_path / "store"))
    discriminator_before = [p.detach().clone() for p in models["discriminator"].parameters()]
    ctx = RecordingContext(models, optimizers)
    method.training_step(models, {"target": target_batch(seed=2)}, ctx)
    assert ctx.checked == ["segmenter", "discriminator"]
    assert any(not torch.equal(b, a) for b, a in zip(discriminator_before, models["discriminator"].parameters()))
    assert all(p.requires_grad for p in models["discriminator"].parameters())  # unfrozen after the G phase


def test_paper_variant_makes_two_generator_steps(tmp_path):
    method, models, optimizers = build_cra(
        rare_store(tmp_path / "store"), update_mode="successive", seg_temperature=1.0
    )
    assert set(optimizers) == {"segmenter", "segmenter_adv", "discriminator"}
    ctx = step_context(optimizers)
    losses = method.training_step(models, {"target": target_batch(seed=4)}, ctx)
    assert ctx.stepped == ["segmenter", "segmenter_adv", "discriminator"]
    assert all(torch.isfinite(value) for value in losses.values())


def test_bn_momentum_field_sets_every_batchnorm(tmp_path):
    _, models, _ = build_cra(rare_store(tmp_path / "store"), bn_momentum=0.19)
    momenta = [m.momentum for m in models["segmenter"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert momenta == [0.19]


def test_presets_load_with_the_official_and_paper_constants():
    official = load_config("cra")
    paper = load_config("cra_paper")
    assert (official.method.update_mode, official.method.seg_temperature, official.method.bn_momentum) == (
        "summed",
        1.8,
        0.19,
    )
    # The trust rule comes from the store (null here); the store's default is the official rule.
    assert (official.method.entropy_threshold, official.method.rare_factor, official.method.adv_weight) == (
        None,
        None,
        0.001,
    )
    assert (official.optim.weight_decay, official.optim.stop_iter, official.optim.max_iters) == (5e-4, 40000, 62500)
    assert (paper.method.update_mode, paper.method.seg_temperature, paper.method.bn_momentum) == (
        "successive",
        1.0,
        None,
    )
    assert paper.method.soft_label_temperature == 1.8 and paper.optim.weight_decay == 1e-4


def test_successive_mode_applies_weight_decay_once_per_iteration(tmp_path):
    """With every gradient zero (no trusted pixel, adversarial weight 0) one iteration only
    decays: SGD with momentum multiplies each parameter by 1 - lr * wd per step that decays it.
    Both modes must decay once; the paper mode's second (adversarial) optimiser must not."""
    lr, weight_decay = 0.01, 0.1
    optim = OptimConfig(lr=lr, weight_decay=weight_decay, head_lr_mult=10.0)
    batch = target_batch(seed=1)
    batch["entropy"] = torch.where(batch["entropy"] == -1, batch["entropy"], torch.full_like(batch["entropy"], 0.05))
    for mode in ("summed", "successive"):
        method = CRA(
            CRAConfig(pseudo_label_store=str(rare_store(tmp_path / "store")), update_mode=mode, adv_weight=0.0),
            num_classes=NUM_CLASSES,
        )
        torch.manual_seed(0)
        models = method.build_models(TinySegmenter())
        segmenter = models["segmenter"]
        assert not any(method.region_masks(batch)[0].flatten())
        before = {name: p.detach().clone() for name, p in segmenter.named_parameters()}
        method.training_step(models, {"target": batch}, step_context(method.build_optimizers(models, optim)))
        for name, param in segmenter.named_parameters():
            group_lr = lr * (10.0 if name.startswith("classifier") else 1.0)
            expected = before[name] * (1 - group_lr * weight_decay)
            assert torch.allclose(param.detach(), expected, rtol=1e-6, atol=0), (
                f"{mode}: {name} shrank by {(param / before[name]).flatten()[0].item():.6f}, "
                f"expected {1 - group_lr * weight_decay:.6f} (one decay per iteration)"
            )


def test_bn_momentum_is_refused_with_the_two_forward_mode():
    """0.19 folds the official two BN updates into one forward; `successive` forwards twice."""
    with pytest.raises(ValueError, match=r"method\.update_mode=successive.*method\.bn_momentum=null"):
        CRAConfig(update_mode="successive", bn_momentum=0.19)
    with pytest.raises(ValueError, match=r"method\.bn_momentum"):
        load_config("cra", ["method.update_mode=successive"])
    with pytest.raises(ValueError, match=r"method\.bn_momentum"):
        load_config("demo_cra", ["method.update_mode=successive"])
    assert load_config("cra", ["method.update_mode=successive", "method.bn_momentum=null"]).method.bn_momentum is None
    assert (
        load_config("cra_paper").method.bn_momentum is None and load_config("demo_cra_paper").method.bn_momentum is None
    )
    assert CRAConfig(update_mode="summed", bn_momentum=0.19).bn_momentum == 0.19


# ---------------------------------------------------------------------------------- data & store


def test_dataset_joins_store_augments_jointly_and_pads_with_ignore_values(tmp_path):
    root = write_cityscapes(tmp_path / "cs", splits=("train",), size=(8, 16))
    images = build_dataset("cityscapes", root, "train", num_classes=19, labelled=False)
    store = PseudoLabelStore(write_store(tmp_path / "store", images.names, size=(8, 16)))
    # Crop larger than the image: padding at the bottom and right; flip always.
    dataset = PseudoLabelledDataset(images, store, Compose([RandomCrop(10, 20), RandomHorizontalFlip(1.0)]))
    sample = dataset[1]
    assert "mask" not in sample
    label, entropy = store.load(images.names[1])
    # After the flip the padded columns are on the left; the padded rows stay at the bottom.
    assert torch.equal(sample["pseudo_mask"][:8, 4:], torch.from_numpy(label.astype(np.int64)).flip(-1))
    assert torch.equal(sample["entropy"][:8, 4:], torch.from_numpy(entropy).flip(-1))
    assert (sample["pseudo_mask"][8:] == 255).all() and (sample["pseudo_mask"][:, :4] == 255).all()
    assert (sample["entropy"][8:] == -1).all() and (sample["entropy"][:, :4] == -1).all()
    assert torch.equal(sample["image"][:, :8, 4:], images[1]["image"].flip(-1))


def test_bad_stores_fail_before_training_with_clear_errors(tmp_path):
    store = write_store(tmp_path / "store", ["aachen/aachen_000000_000000"])
    with pytest.raises(ValueError, match="pseudo_label_store"):
        CRA(CRAConfig(), num_classes=NUM_CLASSES)
    with pytest.raises(FileNotFoundError, match="crossregion pseudo-label"):
        CRA(CRAConfig(pseudo_label_store=str(tmp_path / "nowhere")), num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="4-class model, but the model has 5 classes"):
        CRA(CRAConfig(pseudo_label_store=str(store)), num_classes=5)
    with pytest.raises(
        ValueError, match=r"method.entropy_threshold=0.3 differs from the pseudo-label store's threshold=0.01"
    ):
        CRA(CRAConfig(pseudo_label_store=str(store), entropy_threshold=0.3), num_classes=NUM_CLASSES)

    method = CRA(CRAConfig(pseudo_label_store=str(store)), num_classes=NUM_CLASSES)

    def experiment(split="train", init_checkpoint="cda.pth"):
        target = DatasetSpec(name="cityscapes", root=str(tmp_path / "cs"), split=split, labelled=False)
        return ExperimentConfig(
            method=method.cfg,
            data=DataConfig(target=target),
            model=ModelConfig(num_classes=19, init_checkpoint=init_checkpoint),
        )

    with pytest.raises(ValueError, match="of split 'train', not 'val'"):
        method.check_config(experiment(split="val"))
    with pytest.raises(ValueError, match="model.init_checkpoint"):
        method.check_config(experiment(init_checkpoint=None))
    method.check_config(experiment())

    write_cityscapes(tmp_path / "cs", splits=("train",))
    with pytest.raises(ValueError, match="lacks 3 of 4 images"):
        build_train_datasets(experiment(), method)


def test_the_trust_rule_comes_from_the_store(tmp_path):
    """One λ: the store records the rule it was made with; a method takes it or refuses another."""
    store = write_store(tmp_path / "store", ["aachen/aachen_000000_000000"], threshold=0.02, rare_factor=1.0)
    method = CRA(CRAConfig(pseudo_label_store=str(store)), num_classes=NUM_CLASSES)
    assert method.entropy_threshold == 0.02 and method.class_factors.tolist() == [1.0] * NUM_CLASSES
    assert CRA(CRAConfig(pseudo_label_store=str(store), entropy_threshold=0.02), num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="method.rare_factor=0.5 differs .* rare_factor=1.0"):
        CRA(CRAConfig(pseudo_label_store=str(store), rare_factor=0.5), num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"outside \(0, 1/K\]"):
        CRA(
            CRAConfig(pseudo_label_store=str(write_store(tmp_path / "wide", ["a/a_0_0"], threshold=0.3))),
            num_classes=NUM_CLASSES,
        )
