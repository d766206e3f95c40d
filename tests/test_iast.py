"""IAST's pure pieces against the official formulas, and official IAST checkpoints in load_segmenter.

Each reference below is the official computation transcribed from its formula (numpy percentile
for the selector, as the code does); tests/data/iast_reference.json holds only numbers recorded
from the official model definition (key names, shapes, logits), never its code.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from crossregion.methods.adaptsegnet import domain_mse
from crossregion.methods.iast_losses import (
    ENTROPY_REGULARISATION_WEIGHT,
    KLD_REGULARISATION_WEIGHT,
    entropy_regularisation,
    kld_regularisation,
    region_guided_regularisation,
)
from crossregion.methods.iast_selector import InstanceAdaptiveSelector, proportion_for_round, threshold_pseudo_labels
from crossregion.methods.losses import SOURCE_DOMAIN, TARGET_DOMAIN, resize_aligned
from crossregion.models import load_segmenter
from crossregion.models.checkpoint_io import detect_format

REFERENCE_PATH = Path(__file__).parent / "data" / "iast_reference.json"
NUM_CLASSES = 5


def peaked_softmax(seed: int, shape=(2, NUM_CLASSES, 8, 10), sharpness: float = 4.0) -> torch.Tensor:
    """Softmax maps with a spread of confidences (0.3 .. 0.999), so the quantiles move."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * sharpness
    return torch.softmax(logits, dim=1)


# --- the official selector, transcribed ---------------------------------------------------------


def official_selector_run(batches, alpha, gamma, beta=0.9, initial=0.9):
    """Thresholds and labels after each batch, as the official label generation computes them.

    Per batch: each class's sample is [its threshold] + float16 max-probabilities of the pixels
    predicted as it; batch threshold = numpy percentile at 100 (1 − α θ^γ), kept in float32;
    θ ← β θ + (1 − β) batch threshold; θ ≥ 1 → 0.999; pixels with max-probability < θ[argmax]
    become 255.
    """
    thresholds = np.ones(NUM_CLASSES) * initial
    history = []
    for probs in batches:
        array = probs.numpy().astype(np.float32)
        predicted = array.argmax(axis=1)
        confidence = array.max(axis=1)
        batch_thresholds = np.ones(NUM_CLASSES, dtype=np.float32)
        for c in range(NUM_CLASSES):
            sample = np.array([thresholds[c]] + list(confidence[predicted == c].astype(np.float16)))
            batch_thresholds[c] = np.percentile(sample, 100 * (1 - alpha * thresholds[c] ** gamma))
        thresholds = beta * thresholds + (1 - beta) * batch_thresholds
        thresholds[thresholds >= 1] = 0.999
        labels = predicted.copy()
        labels[confidence < thresholds[predicted]] = 255
        history.append((thresholds.copy(), labels))
    return history


@pytest.mark.parametrize(("alpha", "gamma"), [(0.2, 8.0), (0.3, 8.0), (0.5, 1.0)])
def test_selector_matches_the_official_procedure(alpha, gamma):
    batches = [peaked_softmax(seed) for seed in range(4)]
    selector = InstanceAdaptiveSelector(NUM_CLASSES, proportion=alpha, decay=gamma)
    for probs, (expected_thresholds, expected_labels) in zip(
        batches, official_selector_run(batches, alpha, gamma), strict=True
    ):
        labels = selector.select(probs)
        np.testing.assert_allclose(selector.thresholds.numpy(), expected_thresholds, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(labels.numpy(), expected_labels)
    assert selector.num_updates == len(batches)


def test_thresholds_move_once_per_call_and_absent_classes_keep_theirs():
    probs = peaked_softmax(0)
    probs[:, 3] = 0.0  # class 3 is never predicted in this batch
    selector = InstanceAdaptiveSelector(NUM_CLASSES)
    assert selector.thresholds.tolist() == [0.9] * NUM_CLASSES
    first = selector.update(probs)
    assert selector.num_updates == 1
    # Only the float32 rounding of the code's batch term moves an absent class (< 1e-8).
    assert first[3].item() == pytest.approx(0.9, abs=1e-8)
    assert all(abs(first[c].item() - 0.9) > 1e-4 for c in (0, 1, 2, 4))
    second = selector.update(probs)
    assert selector.num_updates == 2 and not torch.equal(first, second)


def test_a_threshold_reaching_one_is_capped():
    probs = torch.zeros(1, NUM_CLASSES, 2, 2)
    probs[:, 0] = 1.0
    selector = InstanceAdaptiveSelector(NUM_CLASSES, momentum=0.0)
    labels = selector.select(probs)
    assert selector.thresholds[0].item() == 0.999
    assert labels.eq(0).all()  # 1.0 ≥ 0.999


def test_state_round_trip_restores_the_thresholds_exactly(tmp_path):
    first, later = peaked_softmax(10), peaked_softmax(11)
    selector = InstanceAdaptiveSelector(NUM_CLASSES, proportion=0.25)
    selector.select(first)
    torch.save(selector.state_dict(), tmp_path / "selector.pth")

    resumed = InstanceAdaptiveSelector(NUM_CLASSES, proportion=0.25)
    resumed.load_state_dict(torch.load(tmp_path / "selector.pth", weights_only=True))
    assert torch.equal(resumed.thresholds, selector.thresholds)
    assert resumed.num_updates == 1
    assert torch.equal(resumed.select(later), selector.select(later))
    assert torch.equal(resumed.thresholds, selector.thresholds)


def test_state_of_other_settings_is_refused():
    state = InstanceAdaptiveSelector(NUM_CLASSES, proportion=0.2).state_dict()
    with pytest.raises(ValueError, match="proportion"):
        InstanceAdaptiveSelector(NUM_CLASSES, proportion=0.3).load_state_dict(state)
    with pytest.raises(ValueError, match="num_classes"):
        InstanceAdaptiveSelector(NUM_CLASSES + 1, proportion=0.2).load_state_dict(state)


def test_threshold_ties_are_kept():
    probs = torch.tensor([0.5, 0.25, 0.25]).view(1, 3, 1, 1)
    thresholds = torch.tensor([0.5, 0.9, 0.9], dtype=torch.float64)
    assert threshold_pseudo_labels(probs, thresholds).item() == 0
    assert threshold_pseudo_labels(probs, thresholds + 1e-9).item() == 255


def test_round_proportions():
    assert [proportion_for_round(r) for r in (1, 2, 3, 4)] == [0.2, 0.25, 0.3, 0.3]
    with pytest.raises(ValueError):
        proportion_for_round(0)


# --- region-guided regularisation, transcribed --------------------------------------------------


def official_regularisers(logits, pseudo_label):
    """(KL term, entropy term) as the code computes them on label-sized logits.

    The region weight maps are broadcast over the K classes before counting their non-zero
    entries, which is the normaliser; the KL term is −(1/K) · weight · log_softmax summed.
    """
    num_classes = logits.shape[1]
    labelled = (pseudo_label != 255).to(logits.dtype).unsqueeze(1)
    weight_labelled = torch.ones_like(logits) * labelled
    weight_ignored = torch.ones_like(logits) * (1 - labelled)
    log_probs = torch.log_softmax(logits, dim=1)
    kld = torch.sum(-1 / num_classes * weight_labelled * log_probs) / weight_labelled[weight_labelled > 0].numel()
    entropy = (
        torch.sum(-torch.softmax(logits, dim=1) * weight_ignored * log_probs)
        / weight_ignored[weight_ignored > 0].numel()
    )
    return kld, entropy


def random_pseudo_label(seed, shape=(2, 16, 20), ignored_share=0.4):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, shape, generator=generator)
    labels[torch.rand(shape, generator=generator) < ignored_share] = 255
    return labels


@pytest.mark.parametrize("logit_size", [(16, 20), (4, 5)])
def test_regularisers_match_the_official_formulas(logit_size):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, NUM_CLASSES, *logit_size, generator=generator) * 3
    pseudo_label = random_pseudo_label(4)
    expected_kld, expected_entropy = official_regularisers(resize_aligned(logits, (16, 20)), pseudo_label)
    torch.testing.assert_close(kld_regularisation(logits, pseudo_label), expected_kld)
    torch.testing.assert_close(entropy_regularisation(logits, pseudo_label), expected_entropy)
    weighted = region_guided_regularisation(logits, pseudo_label)
    torch.testing.assert_close(weighted["kld_reg_loss"], KLD_REGULARISATION_WEIGHT * expected_kld)
    torch.testing.assert_close(weighted["entropy_reg_loss"], ENTROPY_REGULARISATION_WEIGHT * expected_entropy)
    assert (KLD_REGULARISATION_WEIGHT, ENTROPY_REGULARISATION_WEIGHT) == (0.1, 3.0)


def test_kld_term_is_kl_to_uniform_plus_log_k_over_k():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(1, NUM_CLASSES, 6, 6, generator=generator, dtype=torch.float64)
    pseudo_label = torch.zeros(1, 6, 6, dtype=torch.long)
    uniform = torch.full_like(logits, 1 / NUM_CLASSES)
    kl = (uniform * (uniform.log() - torch.log_softmax(logits, dim=1))).sum(dim=1).mean()
    expected = (kl + np.log(NUM_CLASSES)) / NUM_CLASSES
    torch.testing.assert_close(kld_regularisation(logits, pseudo_label).double(), expected, rtol=1e-6, atol=1e-7)


def test_empty_regions_give_zero_not_nan_and_gradients_flow():
    logits = torch.randn(1, NUM_CLASSES, 4, 4, requires_grad=True)
    all_labelled = torch.zeros(1, 4, 4, dtype=torch.long)
    assert entropy_regularisation(logits, all_labelled).item() == 0.0
    assert kld_regularisation(logits, torch.full((1, 4, 4), 255)).item() == 0.0
    kld_regularisation(logits, all_labelled).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_domain_mse_is_the_official_least_squares_loss():
    generator = torch.Generator().manual_seed(6)
    outputs = torch.randn(2, 1, 3, 5, generator=generator)
    torch.testing.assert_close(
        domain_mse(outputs, SOURCE_DOMAIN),
        torch.nn.MSELoss()(outputs, torch.zeros_like(outputs)),
    )
    torch.testing.assert_close(domain_mse(outputs, TARGET_DOMAIN), ((outputs - 1) ** 2).mean())


# --- official IAST checkpoints ------------------------------------------------------------------


def fill_iast_weight(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The deterministic weight recipe the reference numbers were recorded with.

    Seeded by the CRC-32 of the (prefix-free) key, so a value depends on its name only; BN
    statistics and affine values in sane ranges, convs ~ N(0, 1/fan_in), so ResNet-101 stays
    finite. Rounded to ``dtype``, the stored precision.
    """
    seed = zlib.crc32(key.encode())
    generator = torch.Generator().manual_seed(seed)
    if key.endswith("num_batches_tracked"):
        return torch.tensor(seed % 1000, dtype=dtype)
    if key.endswith("running_var"):
        values = 0.5 + torch.rand(shape, generator=generator, dtype=torch.float64)
    elif key.endswith("running_mean"):
        values = 0.2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 0.1
    elif len(shape) == 1 and key.endswith(".weight"):
        values = 0.25 + 0.5 * torch.rand(shape, generator=generator, dtype=torch.float64)
    elif len(shape) == 1:
        values = 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)
    else:
        values = torch.randn(shape, generator=generator, dtype=torch.float64) / float(np.prod(shape[1:])) ** 0.5
    return values.to(dtype)


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE_PATH.read_text())


def iast_state(entries, *, real_values=True):
    """A state dict in IAST's saved layout; ``real_values=False`` stores one number per tensor
    (an expanded scalar keeps its shape on disk) for tests that only need keys and shapes."""
    state = {}
    for key, shape, dtype_name in entries:
        dtype = getattr(torch, dtype_name)
        if real_values:
            state[key] = fill_iast_weight(key.removeprefix("module."), tuple(shape), dtype)
        else:
            state[key] = torch.zeros((), dtype=dtype).expand(shape) if shape else torch.zeros((), dtype=dtype)
    return state


@pytest.fixture(scope="module")
def warmup_checkpoint(reference, tmp_path_factory):
    """An IAST warm-up file (segmentor + discriminator) with the recipe's weights."""
    path = tmp_path_factory.mktemp("iast") / "last_iter.pth"
    torch.save(iast_state(reference["self_training_keys"] + reference["warmup_extra_keys"]), path)
    return path


def test_official_iast_checkpoint_gives_the_official_logits(reference, warmup_checkpoint):
    segmenter, info = load_segmenter(warmup_checkpoint)
    assert (info["format"], info["backbone"], info["num_classes"], info["freeze_bn"]) == (
        "iast",
        "resnet101",
        19,
        False,
    )
    segmenter = segmenter.double()
    generator = torch.Generator().manual_seed(reference["input"]["seed"])
    images = torch.randn(reference["input"]["shape"], generator=generator, dtype=torch.float64)
    with torch.no_grad():
        stride8 = segmenter(images)["logits"]
    assert list(stride8.shape) == reference["decoder_logits_shape"]
    tolerance = {"rtol": 1e-7, "atol": 1e-9}
    torch.testing.assert_close(
        stride8[0, :, 4, 2:6],
        torch.tensor(reference["decoder_logits_row4_cols2to5"], dtype=torch.float64),
        **tolerance,
    )
    # IAST's predictor upsamples to the input size, bilinear with align_corners=True.
    logits = resize_aligned(stride8, tuple(images.shape[-2:]))
    assert list(logits.shape) == reference["logits_shape"]
    expected = {
        "logits_row32_cols30to34": logits[0, :, 32, 30:35],
        "logits_class_mean": logits[0].mean(dim=(1, 2)),
        "logits_class_std": logits[0].std(dim=(1, 2)),
        "logits_sum": logits.sum(),
        "logits_sum_of_squares": (logits**2).sum(),
    }
    for name, value in expected.items():
        torch.testing.assert_close(value, torch.tensor(reference[name], dtype=torch.float64), **tolerance, msg=name)


def test_iast_layout_is_detected_with_and_without_the_ddp_prefix(reference):
    with_prefix = iast_state(reference["self_training_keys"], real_values=False)
    without_prefix = {key.removeprefix("module."): value for key, value in with_prefix.items()}
    assert detect_format(with_prefix, "a.pth") == detect_format(without_prefix, "b.pth") == "iast"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("drop_layer", r"missing keys \(feature_extractor\.backbone\.layer3\.7\.conv2\.weight"),
        ("extra_key", r"unexpected keys \(predictor\.conv1_1\.weight"),
        (
            "aspp_shape",
            r"classifier\.conv2d_list\.2\.weight expected \(19, 2048, 3, 3\) found \(19, 1024, 3, 3\)",
        ),
    ],
)
def test_iast_checkpoint_that_does_not_fit_is_a_clear_error(reference, tmp_path, edit, message):
    state = iast_state(reference["self_training_keys"], real_values=False)
    if edit == "drop_layer":
        del state["module.backbone.layer3.7.conv2.weight"]
    elif edit == "extra_key":
        state["module.predictor.conv1_1.weight"] = torch.zeros(()).expand(19, 2048, 1, 1)
    else:
        state["module.decoder.aspp.conv2d_list.2.weight"] = torch.zeros(()).expand(19, 1024, 3, 3)
    path = tmp_path / "iast_edited.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=message) as error:
        load_segmenter(path)
    assert str(path) in str(error.value)


def test_iast_checkpoint_with_other_classes_names_file_and_counts(reference, tmp_path):
    path = tmp_path / "iast_19.pth"
    torch.save(iast_state(reference["self_training_keys"], real_values=False), path)
    with pytest.raises(ValueError, match="resnet101 with 19 classes, expected a resnet101 with 16 classes") as error:
        load_segmenter(path, num_classes=16)
    assert str(path) in str(error.value)


def test_a_raw_state_dict_of_something_else_is_refused(tmp_path):
    path = tmp_path / "classifier.pth"
    torch.save({"module.fc.weight": torch.zeros(3, 4)}, path)
    with pytest.raises(ValueError, match="IAST") as error:
        load_segmenter(path)
    assert str(path) in str(error.value)


def test_warmup_checkpoint_format_is_reported_not_fada(reference, tmp_path):
    path = tmp_path / "warmup.pth"
    torch.save(
        iast_state(reference["self_training_keys"] + reference["warmup_extra_keys"], real_values=False),
        path,
    )
    with pytest.raises(ValueError, match="iast format, not official"):
        load_segmenter(path, format="official")
