"""One training step of each CDA method (AdaptSegNet, AdvEnt, MinEnt, FADA) on random batches.

Checks the phase discipline the methods promise: no gradient reaches a discriminator from the
segmenter's loss, the discriminator step leaves the segmenter alone, and a step trains the
segmenter. Also: every shipped preset loads.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from crossregion.config import available_presets, load_config
from crossregion.config.schema import DataConfig, DatasetSpec, ExperimentConfig, ModelConfig
from crossregion.engine.amp import build_grad_scaler
from crossregion.engine.trainer import StepContext
from crossregion.methods import METHODS
from crossregion.methods.adaptsegnet import AdaptSegNetConfig
from crossregion.methods.advent import AdventConfig, entropy_loss, weighted_self_information
from crossregion.methods.fada import FadaConfig
from crossregion.models import ASPPClassifier, Segmenter
from crossregion.trust import normalized_entropy

NUM_CLASSES = 4
# 32x64 is the smallest input for which the output-space discriminator (5 stride-2 convs) gives a map.
HEIGHT, WIDTH = 32, 64
CPU = torch.device("cpu")


class TinyFeatureExtractor(nn.Module):
    """Stride-8 stand-in for a dilated ResNet: three strided convs with BatchNorm, layer3-like output too."""

    feature_channels = 16
    intermediate_channels = 8

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.last = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())

    def forward_with_intermediate(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        intermediate = self.backbone(images)
        return intermediate, self.last(intermediate)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_with_intermediate(images)[1]


def build_segmenter(multi_level: bool = False) -> Segmenter:
    """The package's Segmenter (ASPP heads, output dict, parameter groups) on a tiny backbone."""
    extractor = TinyFeatureExtractor()
    aux = ASPPClassifier(extractor.intermediate_channels, NUM_CLASSES) if multi_level else None
    return Segmenter(extractor, ASPPClassifier(extractor.feature_channels, NUM_CLASSES), aux)


class RecordingContext(StepContext):
    """A StepContext that records, at each optimiser step, what the phase discipline promises.

    At the segmenter's step (after every generator backward): which discriminator parameters
    hold a gradient. At a discriminator's step (after its backward): which segmenter parameters
    hold a gradient, and the segmenter's weights, to compare with the weights at the end.
    """

    def __init__(self, models, optimizers) -> None:
        super().__init__(iteration=0, device=CPU, optimizers=optimizers, scaler=build_grad_scaler(CPU, "none"))
        self.models = models
        self.disc_grads_at_generator_step: list[str] = []
        self.segmenter_grads_at_disc_step: list[str] = []
        self.segmenter_after_generator_step: dict[str, torch.Tensor] | None = None

    def step(self, name: str) -> None:
        if name == "segmenter":
            self.disc_grads_at_generator_step += [
                f"{model_name}.{key}"
                for model_name, model in self.models.items()
                if model_name != "segmenter"
                for key, p in model.named_parameters()
                if p.grad is not None and p.grad.abs().sum() > 0
            ]
            super().step(name)
            self.segmenter_after_generator_step = _weights(self.models["segmenter"])
        else:
            self.segmenter_grads_at_disc_step += [
                key for key, p in self.models["segmenter"].named_parameters() if p.grad is not None
            ]
            super().step(name)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _batches(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, NUM_CLASSES, (2, HEIGHT, WIDTH), generator=generator)
    mask[:, :4] = 255  # some ignored pixels, as in real labels
    return {
        "source": {"image": torch.randn(2, 3, HEIGHT, WIDTH, generator=generator), "mask": mask},
        "target": {"image": torch.randn(2, 3, HEIGHT, WIDTH, generator=generator)},
    }


def _run_step(method_cfg, *, multi_level: bool):
    torch.manual_seed(0)
    method = METHODS.get(method_cfg.name)(method_cfg, num_classes=NUM_CLASSES)
    segmenter = build_segmenter(multi_level)
    models = method.build_models(segmenter)
    optimizers = method.build_optimizers(models, ExperimentConfig(method=method_cfg).optim)
    for model in models.values():
        model.train()
    before = _weights(segmenter)
    ctx = RecordingContext(models, optimizers)
    losses = method.training_step(models, _batches(), ctx)
    return method, models, ctx, losses, before


CASES = {
    "adaptsegnet_multi": (
        AdaptSegNetConfig(),
        True,
        {
            "loss/seg_src",
            "loss/seg_src_aux",
            "loss/adv_tgt",
            "loss/adv_tgt_aux",
            "loss/disc_src",
            "loss/disc_tgt",
            "loss/disc_src_aux",
            "loss/disc_tgt_aux",
        },
    ),
    "adaptsegnet_single": (
        AdaptSegNetConfig(),
        False,
        {"loss/seg_src", "loss/adv_tgt", "loss/disc_src", "loss/disc_tgt"},
    ),
    "advent": (
        AdventConfig(variant="advent"),
        True,
        {
            "loss/seg_src",
            "loss/seg_src_aux",
            "loss/adv_tgt",
            "loss/adv_tgt_aux",
            "loss/disc_src",
            "loss/disc_tgt",
            "loss/disc_src_aux",
            "loss/disc_tgt_aux",
        },
    ),
    "minent": (
        AdventConfig(variant="minent"),
        True,
        {"loss/seg_src", "loss/seg_src_aux", "loss/ent_tgt", "loss/ent_tgt_aux"},
    ),
    "fada": (FadaConfig(), False, {"loss/seg_src", "loss/adv_tgt", "loss/disc_src", "loss/disc_tgt"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_step_keeps_the_phases_apart(case: str) -> None:
    method_cfg, multi_level, expected_keys = CASES[case]
    _, models, ctx, losses, before = _run_step(method_cfg, multi_level=multi_level)

    assert set(losses) == expected_keys
    for key, value in losses.items():
        assert value.ndim == 0 and not value.requires_grad, key
        assert torch.isfinite(value), f"{key} = {value}"
    # Every optimiser stepped once, as the trainer demands.
    assert sorted(ctx.stepped) == sorted(models)

    # Generator phase: the discriminators were frozen, so no gradient reached them.
    assert ctx.disc_grads_at_generator_step == []
    for name, model in models.items():
        assert all(p.requires_grad for p in model.parameters()), f"{name} left frozen"
    # Discriminator phase: nothing flowed into the segmenter and its weights did not move.
    assert ctx.segmenter_grads_at_disc_step == []
    after = _weights(models["segmenter"])
    for key, value in ctx.segmenter_after_generator_step.items():
        assert torch.equal(after[key], value), f"discriminator step changed segmenter {key}"
    # The step trained the segmenter (backbone and head).
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert any(key.startswith("feature_extractor.") for key in changed)
    assert any(key.startswith("classifier.") for key in changed)
    if multi_level:
        assert any(key.startswith("aux_classifier.") for key in changed)


@pytest.mark.parametrize("case", ["adaptsegnet_multi", "fada"])
def test_discriminators_learn(case: str) -> None:
    method_cfg, multi_level, _ = CASES[case]
    _, models, _, _, _ = _run_step(method_cfg, multi_level=multi_level)
    torch.manual_seed(0)
    fresh = METHODS.get(method_cfg.name)(method_cfg, num_classes=NUM_CLASSES).build_models(build_segmenter(multi_level))
    for name in models:
        if name != "segmenter":
            trained, initial = _weights(models[name]), _weights(fresh[name])
            assert any(not torch.equal(trained[k], initial[k]) for k in trained), f"{name} did not train"


def test_minent_has_no_discriminator() -> None:
    method = METHODS.get("advent")(AdventConfig(variant="minent"), num_classes=NUM_CLASSES)
    models = method.build_models(build_segmenter(multi_level=True))
    assert list(models) == ["segmenter"]


@pytest.mark.parametrize(("adv_weight", "target_matters"), [(0.0, False), (1.0, True)])
def test_target_batch_acts_through_the_adversarial_weight(adv_weight: float, target_matters: bool) -> None:
    """FADA's segmenter update depends on the target batch exactly when adv_weight > 0."""
    results = []
    for target_seed in (1, 2):
        torch.manual_seed(0)
        cfg = FadaConfig(adv_weight=adv_weight)
        method = METHODS.get("fada")(cfg, num_classes=NUM_CLASSES)
        models = method.build_models(build_segmenter())
        optimizers = method.build_optimizers(models, ExperimentConfig(method=cfg).optim)
        batches = _batches()
        batches["target"]["image"] = torch.randn(
            2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(target_seed)
        )
        models["segmenter"].eval()  # else the target batch's BatchNorm statistics would differ too
        method.training_step(models, batches, RecordingContext(models, optimizers))
        results.append(_weights(models["segmenter"]))
    same = all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert same != target_matters


def test_weighted_self_information_matches_cra_entropy() -> None:
    probs = torch.softmax(torch.randn(2, NUM_CLASSES, 3, 5), dim=1)
    info = weighted_self_information(probs)
    # ADVENT's definition, with its 1e-30 inside the log.
    expected = -probs * torch.log2(probs + 1e-30) / math.log2(NUM_CLASSES)
    assert torch.allclose(info, expected, atol=1e-6)
    assert torch.allclose(info.mean(dim=1), normalized_entropy(probs, dim=1), atol=1e-6)
    assert torch.allclose(entropy_loss(probs), expected.sum(dim=1).mean(), atol=1e-6)
    one_hot = torch.zeros(1, NUM_CLASSES, 2, 2)
    one_hot[:, 0] = 1
    assert weighted_self_information(one_hot).abs().sum() == 0


def test_entropy_gradient_is_finite_for_saturated_predictions() -> None:
    """A softmax that underflows to exactly 0 must not give NaN gradients (xlogy would)."""
    logits = torch.tensor([-200.0, 100.0, 100.0, 0.0]).view(1, NUM_CLASSES, 1, 1).requires_grad_()
    probs = torch.softmax(logits, dim=1)
    assert probs.min() == 0
    (entropy_loss(probs) + weighted_self_information(probs).sum()).backward()
    assert torch.isfinite(logits.grad).all()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="method.variant"):
        AdventConfig(variant="advnet")
    with pytest.raises(ValueError, match="soft_label_clip"):
        FadaConfig(soft_label_clip=1.5)
    with pytest.raises(ValueError, match="adv_main_weight"):
        AdaptSegNetConfig(adv_main_weight=-1.0)
    cfg = ExperimentConfig(
        method=FadaConfig(),
        data=DataConfig(
            source=DatasetSpec(name="gta5", root="x"), target=DatasetSpec(name="cityscapes", root="y", labelled=False)
        ),
        model=ModelConfig(multi_level=True),
    )
    with pytest.raises(ValueError, match="model.multi_level: false"):
        METHODS.get("fada")(cfg.method, num_classes=19).check_config(cfg)
    without_target = ExperimentConfig(
        method=AdaptSegNetConfig(), data=DataConfig(source=DatasetSpec(name="gta5", root="x"))
    )
    with pytest.raises(ValueError, match="data.target"):
        METHODS.get("adaptsegnet")(without_target.method, num_classes=19).check_config(without_target)


CDA_PRESET_NAME = r"(demo|gta5|synthia|synscapes)_(source_only|adaptsegnet|advent|minent|fada)(_vgg16)?"
CDA_PRESETS = [name for name in available_presets() if re.fullmatch(CDA_PRESET_NAME, name)]


def test_every_paper_setup_has_a_preset() -> None:
    for dataset in ("gta5", "synthia", "synscapes"):
        for method in ("source_only", "adaptsegnet", "advent", "minent", "fada"):
            for suffix in ("", "_vgg16"):
                assert f"{dataset}_{method}{suffix}" in CDA_PRESETS
    for method in ("adaptsegnet", "advent", "minent", "fada"):
        assert f"demo_{method}" in CDA_PRESETS


@pytest.mark.parametrize("preset", CDA_PRESETS)
def test_every_preset_loads(preset: str) -> None:
    cfg = load_config(preset)
    METHODS.get(cfg.method.name)(cfg.method, num_classes=cfg.model.num_classes).check_config(cfg)


@pytest.mark.parametrize(
    ("preset", "method", "backbone", "num_classes", "last_iter"),
    [
        ("gta5_fada", "fada", "resnet101", 19, 40_000),
        ("synthia_fada_vgg16", "fada", "vgg16", 16, 40_000),
        ("gta5_adaptsegnet", "adaptsegnet", "resnet101", 19, 150_000),
        ("synscapes_advent", "advent", "resnet101", 19, 120_000),
        ("gta5_minent_vgg16", "advent", "vgg16", 19, 120_000),
    ],
)
def test_paper_presets_carry_the_paper_setup(preset, method, backbone, num_classes, last_iter) -> None:
    cfg = load_config(preset)
    assert (cfg.method.name, cfg.model.backbone, cfg.model.num_classes) == (method, backbone, num_classes)
    assert cfg.optim.last_iter == last_iter
    assert cfg.model.multi_level == (backbone == "resnet101" and method != "fada")
