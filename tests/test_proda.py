"""ProDA's pieces: head, official checkpoints, losses and prototypes (docs/proda.md).

Each loss is checked against the official formula transcribed inline (``official_*`` helpers:
the math of ProDA's ``adaptation_modelv2.py`` written out with its own clamps, masks and
normalisers), on small random tensors. The checkpoint test compares with outputs that ProDA's
official model definition computed on deterministic weights (tests/proda_fixtures.py).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from proda_fixtures import deterministic_state, load_reference, reference_input, summarize
from torch import nn

from crossregion.config.schema import ModelConfig
from crossregion.methods.ema import update_ema_model
from crossregion.methods.proda_losses import (
    OFFICIAL_IGNORE_INDEX,
    confidence_regularizer,
    prototype_consistency_loss,
    prototype_distances,
    prototype_weights,
    rectify_pseudo_labels,
    reverse_cross_entropy,
    symmetric_cross_entropy,
)
from crossregion.methods.proda_prototypes import PROTO_COUNT_CAP, Prototypes, class_mean_features, initial_prototypes
from crossregion.models import ProDAClassifier, build_segmenter, export_official, load_segmenter

IGNORE = OFFICIAL_IGNORE_INDEX


def random_tensors(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]


# --- official formulas, transcribed -----------------------------------------------------------


def official_symmetric_ce(logits, labels, alpha, beta, num_classes):
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    probs = torch.clamp(F.softmax(logits, dim=1), min=1e-7, max=1.0)
    mask = (labels != IGNORE).to(logits.dtype)
    labels = labels.clone()
    labels[labels == IGNORE] = num_classes  # an extra class, dropped below
    one_hot = F.one_hot(labels, num_classes + 1).to(logits.dtype).permute(0, 3, 1, 2)[:, :-1]
    one_hot = torch.clamp(one_hot, min=1e-4, max=1.0)
    rce = -((probs * torch.log(one_hot)).sum(dim=1) * mask).sum() / (mask.sum() + 1e-6)
    return alpha * ce + beta * rce


def official_distances(features, prototypes):
    n, _, h, w = features.shape
    out = -torch.ones(n, prototypes.shape[0], h, w, dtype=features.dtype)
    for k in range(prototypes.shape[0]):
        out[:, k] = torch.norm(prototypes[k].reshape(-1, 1, 1).expand(-1, h, w) - features, 2, dim=1)
    return out


def official_weights(features, prototypes, temperature):
    distances = official_distances(features, prototypes)
    nearest = distances.min(dim=1, keepdim=True)[0]
    return F.softmax(-(distances - nearest) * temperature, dim=1)


def official_mean_vectors(features, logits, labels, num_classes):
    """Per-image, per-class means of calculate_mean_vector (no confidence threshold)."""
    argmax = F.softmax(logits, dim=1).argmax(dim=1, keepdim=True)

    def expand(label_map):  # process_label: one channel per class plus one for "other"
        n, _, h, w = label_map.shape
        index = torch.where(label_map < num_classes, label_map, torch.full_like(label_map, num_classes))
        return torch.zeros(n, num_classes + 1, h, w, dtype=features.dtype).scatter_(1, index.long(), 1)

    predicted = expand(argmax)
    if labels is not None:
        predicted = expand(labels[:, None]) * predicted
    scale = F.adaptive_avg_pool2d(predicted, 1)
    found = []
    for n in range(features.shape[0]):
        for t in range(num_classes):
            if scale[n][t].item() == 0 or (predicted[n][t] > 0).sum() < 10:
                continue
            vector = F.adaptive_avg_pool2d(features[n] * predicted[n][t], 1) / scale[n][t]
            found.append((n, t, vector.squeeze()))
    return found


def class_blobs(seed: int, num_classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (2, 8, 6, 6) and logits whose argmax covers classes with 0, <10 and >=10 pixels."""
    (features,) = random_tensors(seed, (2, 8, 6, 6))
    predicted = torch.zeros(2, 6, 6, dtype=torch.long)
    predicted[0, :3] = 1  # 18 pixels of class 1
    predicted[0, 3, :5] = 2  # 5 pixels of class 2: too few
    predicted[1, :, :2] = 3  # 12 pixels of class 3
    logits = F.one_hot(predicted, num_classes).permute(0, 3, 1, 2).to(torch.float64) * 5
    return features, logits + 0.01 * random_tensors(seed + 1, logits.shape)[0]


# --- losses --------------------------------------------------------------------------------


def test_symmetric_cross_entropy_matches_official_formula():
    logits, noise = random_tensors(0, (2, 5, 6, 7), (2, 6, 7))
    labels = torch.randint(0, 5, (2, 6, 7), generator=torch.Generator().manual_seed(1))
    labels[noise > 1.0] = IGNORE
    ours = symmetric_cross_entropy(logits, labels, alpha=0.1, beta=1.0, ignore_index=IGNORE)
    assert torch.allclose(ours, official_symmetric_ce(logits, labels, 0.1, 1.0, 5), rtol=1e-10)
    # Other weights: each term scales on its own.
    ours = symmetric_cross_entropy(logits, labels, alpha=0.7, beta=0.3, ignore_index=IGNORE)
    assert torch.allclose(ours, official_symmetric_ce(logits, labels, 0.7, 0.3, 5), rtol=1e-10)


def test_symmetric_cross_entropy_gradient_and_all_ignored_batch():
    (logits,) = random_tensors(2, (1, 3, 4, 4))
    logits.requires_grad_(True)
    labels = torch.full((1, 4, 4), IGNORE)
    loss = symmetric_cross_entropy(logits, labels, ignore_index=IGNORE)
    loss.backward()
    # The official CE would be NaN here; ours is 0 with a zero gradient.
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert reverse_cross_entropy(logits, labels, ignore_index=IGNORE).item() == 0.0


def test_prototype_distances_and_weights_match_official_formula():
    features, prototypes = random_tensors(3, (2, 8, 5, 6), (4, 8))
    assert torch.allclose(prototype_distances(features, prototypes), official_distances(features, prototypes))
    for temperature in (1.0, 2.5):
        weights = prototype_weights(features, prototypes, temperature=temperature)
        assert torch.allclose(weights, official_weights(features, prototypes, temperature))
        assert torch.allclose(weights.sum(dim=1), torch.ones(2, 5, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="8 channels but prototypes 3"):
        prototype_distances(features, prototypes[:, :3])


def test_rectified_pseudo_labels_match_official_formula():
    features, prototypes, soft_logits = random_tensors(4, (2, 8, 5, 6), (4, 8), (2, 4, 5, 6))
    soft = F.softmax(soft_logits * 2, dim=1)
    weights = official_weights(features, prototypes, 1.0)
    for threshold in (0.0, 0.5):
        rectified = weights * soft
        expected = rectified.max(1, keepdim=True)[1]
        rectified = rectified / rectified.sum(1, keepdim=True)
        expected[rectified.max(1, keepdim=True)[0] < threshold] = IGNORE
        labels, confidence = rectify_pseudo_labels(soft, weights, threshold=threshold, ignore_index=IGNORE)
        assert torch.equal(labels, expected[:, 0])
        assert torch.allclose(confidence, rectified.max(1)[0])
    assert (labels == IGNORE).any() and (labels != IGNORE).any()  # threshold 0.5 bites somewhere


def test_prototype_consistency_loss_matches_official_formula():
    student_features, teacher_features, prototypes = random_tensors(5, (2, 8, 5, 6), (2, 8, 5, 6), (4, 8))
    student_features.requires_grad_(True)
    teacher_distances = official_distances(teacher_features, prototypes)
    padded = torch.zeros(2, 5, 6, dtype=torch.bool)
    padded[0, :2] = True  # strong-view padding: the official warp writes 250 into every class
    teacher_distances[padded[:, None].expand_as(teacher_distances)] = 250
    mask = (teacher_distances != 250).to(torch.float64)
    teacher = F.softmax(-teacher_distances * 1.0, dim=1)
    student = F.log_softmax(-official_distances(student_features, prototypes) * 1.0, dim=1)
    expected = (F.kl_div(student, teacher, reduction="none") * mask).sum() / mask.sum()

    ours = prototype_consistency_loss(
        prototype_distances(student_features, prototypes), teacher_distances, valid=~padded
    )
    assert torch.allclose(ours, expected, rtol=1e-10)
    ours.backward()
    assert student_features.grad.abs().sum() > 0
    # Without a mask: the mean over every class and pixel.
    unmasked = prototype_consistency_loss(teacher_distances * 0.5, teacher_distances * 0.5)
    assert unmasked.abs().item() < 1e-12


def test_confidence_regularizer_matches_official_formula():
    (logits,) = random_tensors(6, (2, 5, 4, 3))
    log_probs = F.log_softmax(logits, dim=1)
    n, k, h, w = logits.shape
    mrkld = -log_probs.sum() / (n * k * h * w)
    mrent = (F.softmax(logits, dim=1) * log_probs).sum() / (n * h * w)
    assert torch.allclose(confidence_regularizer(logits), mrkld)
    assert torch.allclose(confidence_regularizer(logits, "mrkld"), mrkld)
    assert torch.allclose(confidence_regularizer(logits, "mrent"), mrent)
    with pytest.raises(ValueError, match="unknown regulariser 'kld'"):
        confidence_regularizer(logits, "kld")


# --- prototypes ------------------------------------------------------------------------------


def test_class_mean_features_match_official_formula():
    features, logits = class_blobs(7)
    ours = class_mean_features(features, logits)
    expected = official_mean_vectors(features, logits, None, 4)
    assert [(n, t) for n, t, _ in ours] == [(n, t) for n, t, _ in expected] == [(0, 0), (0, 1), (1, 0), (1, 3)]
    for (_, _, vector), (_, _, reference) in zip(ours, expected):
        assert torch.allclose(vector, reference)
    # With labels (source prototypes): only pixels where label and prediction agree count.
    labels = logits.argmax(dim=1)
    labels[0, 0] = 0
    labels[1, 5] = 255
    ours = class_mean_features(features, logits, labels)
    expected = official_mean_vectors(features, logits, labels, 4)
    assert [(n, t) for n, t, _ in ours] == [(n, t) for n, t, _ in expected]
    for (_, _, vector), (_, _, reference) in zip(ours, expected):
        assert torch.allclose(vector, reference)


def test_moving_average_update_is_one_step_per_image_and_class_per_call():
    features, logits = class_blobs(8)
    start = random_tensors(9, (4, 8))[0].float()
    prototypes = Prototypes(4, 8)
    prototypes.vectors.copy_(start)
    momentum = 0.25  # large, so that a skipped or doubled step shows

    expected, counts = start.clone(), torch.zeros(4)
    for _, class_id, vector in official_mean_vectors(features, logits, None, 4):
        expected[class_id] = expected[class_id] * (1 - momentum) + momentum * vector.float()
        counts[class_id] = min(counts[class_id] + 1, PROTO_COUNT_CAP)

    prototypes.update_moving_average(features.float(), logits.float(), momentum=momentum)
    assert torch.allclose(prototypes.vectors, expected, atol=1e-6)
    assert prototypes.counts.tolist() == [2.0, 1.0, 0.0, 1.0]  # class 0 in both images
    assert torch.equal(prototypes.vectors[2], start[2])  # 5 pixels: not updated


def test_mean_update_is_a_running_mean_capped_at_3000():
    prototypes = Prototypes(4, 8)
    features, logits = class_blobs(10)
    prototypes.update_mean(features.float(), logits.float())
    prototypes.update_mean(features.float(), logits.float())
    vectors = {(n, t): v.float() for n, t, v in official_mean_vectors(features, logits, None, 4)}
    class0 = (vectors[(0, 0)] + vectors[(1, 0)]) / 2  # the same two images twice: same mean
    assert torch.allclose(prototypes.vectors[0], class0, atol=1e-6)
    assert prototypes.counts.tolist() == [4.0, 2.0, 0.0, 2.0]
    # Past the cap the update weighs the new vector 1 / (cap + 1).
    prototypes.counts[1] = PROTO_COUNT_CAP
    before = prototypes.vectors[1].clone()
    prototypes.update_mean(features.float(), logits.float())
    expected = (before * PROTO_COUNT_CAP + vectors[(0, 1)]) / (PROTO_COUNT_CAP + 1)
    assert torch.allclose(prototypes.vectors[1], expected, atol=1e-6)
    assert prototypes.counts[1].item() == PROTO_COUNT_CAP


def test_prototypes_state_round_trip():
    prototypes = Prototypes(4, 8)
    features, logits = class_blobs(11)
    prototypes.update_moving_average(features.float(), logits.float(), momentum=0.5)
    buffer = io.BytesIO()
    torch.save(prototypes.state_dict(), buffer)
    buffer.seek(0)
    restored = Prototypes(4, 8)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert set(restored.state_dict()) == {"vectors", "counts"}
    assert torch.equal(restored.vectors, prototypes.vectors)
    assert torch.equal(restored.counts, prototypes.counts)
    # Restored state continues exactly as the original does.
    prototypes.update_moving_average(features.float(), logits.float())
    restored.update_moving_average(features.float(), logits.float())
    assert torch.equal(restored.vectors, prototypes.vectors)


def test_initial_prototypes_average_every_batch_in_eval_mode():
    batches = [class_blobs(seed) for seed in (12, 13)]

    class Recorded(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0
            self.modes = []

        def forward(self, images):
            self.modes.append(self.training)
            features, logits = batches[self.calls]
            self.calls += 1
            return {"features": features.float(), "logits": logits.float()}

    model = Recorded().train()
    prototypes = initial_prototypes(model, [torch.zeros(2, 3, 6, 6)] * 2, num_classes=4, channels=8)
    assert model.modes == [False, False] and model.training
    found = [
        v.float() for seed, (f, lg) in enumerate(batches) for n, t, v in official_mean_vectors(f, lg, None, 4) if t == 0
    ]
    assert torch.allclose(prototypes.vectors[0], torch.stack(found).mean(dim=0), atol=1e-6)
    assert prototypes.counts[0].item() == len(found)


def test_update_ema_model_averages_parameters_and_copies_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    teacher = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    student(torch.randn(2, 3, 5, 5))  # moves the student's BN statistics
    expected = [0.999 * t + 0.001 * s for t, s in zip(teacher.parameters(), student.parameters())]
    update_ema_model(teacher, student)
    assert all(torch.allclose(t, e) for t, e in zip(teacher.parameters(), expected))
    assert all(torch.equal(t, s) for t, s in zip(teacher.buffers(), student.buffers()))


# --- head and model config -------------------------------------------------------------------


def test_proda_head_layout():
    head = ProDAClassifier(2048, 19)
    for branch, dilation in zip(head.conv2d_list[1:], (6, 12, 18, 24)):
        assert branch[0].dilation == branch[0].padding == (dilation, dilation)
        assert branch[0].weight.shape == (256, 2048, 3, 3)
        assert branch[1].num_groups == 32 and branch[1].num_channels == 256
    assert head.conv2d_list[0][0].weight.shape == (256, 2048, 1, 1)
    squeeze = head.bottleneck[0].se
    assert squeeze[0].weight.shape == (80, 1280) and squeeze[2].weight.shape == (1280, 80)
    assert head.bottleneck[1].weight.shape == (256, 1280, 3, 3)
    assert isinstance(head.head[0], nn.Dropout2d) and head.head[0].p == 0.1
    assert head.head[1].weight.shape == (19, 256, 1, 1) and head.head[1].bias is None
    assert torch.equal(head.bottleneck[1].bias, torch.zeros(256))
    # Official init in effect: every conv weight N(0, 0.01).
    assert 0.008 < head.conv2d_list[1][0].weight.std().item() < 0.012


def test_segmenter_with_proda_head_returns_prototype_features():
    torch.manual_seed(0)
    segmenter = build_segmenter("resnet18", 5, head="proda").eval()
    images = torch.randn(2, 3, 33, 40)
    with torch.no_grad():
        outputs = segmenter(images)
        assert outputs["features"].shape == (2, 256, 5, 5)
        assert outputs["logits"].shape == (2, 5, 5, 5)
        # The features are what the final 1x1 classifier sees.
        assert torch.allclose(segmenter.classifier.head[1](outputs["features"]), outputs["logits"])
    assert segmenter.feature_channels == 256 and segmenter.head == "proda"
    segmenter.train()
    with torch.no_grad():
        dropped = segmenter(images)["features"]
    assert (dropped == 0).flatten(2).all(dim=2).any()  # Dropout2d zeroes whole channels
    with pytest.raises(ValueError, match="no multi-level variant"):
        build_segmenter("resnet18", 5, head="proda", multi_level=True)
    with pytest.raises(ValueError, match="unknown head 'deeplabv3'"):
        build_segmenter("resnet18", 5, head="deeplabv3")


def test_model_config_validates_head():
    assert ModelConfig().head == "aspp"
    assert ModelConfig(head="proda").head == "proda"
    with pytest.raises(ValueError, match="model.head must be one of"):
        ModelConfig(head="PRODA")
    with pytest.raises(ValueError, match="no multi-level variant"):
        ModelConfig(head="proda", multi_level=True)


def test_build_model_passes_the_head_into_the_checkpointed_arguments():
    from crossregion.app.train import build_model

    segmenter, model_args = build_model(ModelConfig(backbone="resnet18", num_classes=5, head="proda"))
    assert segmenter.head == "proda" and model_args["head"] == "proda"


def test_crossregion_checkpoint_keeps_the_head(tmp_path):
    torch.manual_seed(0)
    segmenter = build_segmenter("resnet18", 5, head="proda").eval()
    arguments = {"backbone": "resnet18", "num_classes": 5, "freeze_bn": False, "multi_level": False, "head": "proda"}
    path = tmp_path / "proda_r18.pth"
    torch.save(
        {"format": "crossregion", "iteration": 3, "model": arguments, "models": {"segmenter": segmenter.state_dict()}},
        path,
    )
    loaded, info = load_segmenter(path)
    assert info["head"] == "proda" and loaded.head == "proda"
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images)["logits"], segmenter(images)["logits"])
    with pytest.raises(
        ValueError,
        match=r"proda_r18\.pth holds a resnet18 with 5 classes and the proda head, "
        r"expected a resnet18 with 5 classes$",
    ):
        load_segmenter(path, head="aspp")
    with pytest.raises(ValueError, match="official FADA/CRA format holds a DeepLab-v2 ASPP head"):
        export_official(loaded, tmp_path / "out.pth")


# --- official ProDA checkpoints --------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module")
def official_state(reference):
    return deterministic_state([(key, shape) for key, shape in reference["keys_and_shapes"]])


def proda_container(state, prototypes=None):
    """A checkpoint laid out as ProDA's train.py saves one."""
    return {
        "ResNet101": {"model_state": state, "objective_vectors": prototypes},
        "iter": 1001,
        "best_iou": np.float64(0.43),
    }


def test_our_proda_model_has_the_official_keys_and_shapes(reference):
    with torch.device("meta"):
        segmenter = build_segmenter("resnet101_deeplab", 19, head="proda")
    ours = [
        (key.replace("feature_extractor.backbone.", "").replace("classifier.", "layer5."), list(value.shape))
        for key, value in segmenter.state_dict().items()
    ]
    assert ours == [(key, shape) for key, shape in reference["keys_and_shapes"]]


def test_official_checkpoint_gives_the_official_outputs(tmp_path, reference, official_state):
    prototypes = torch.arange(19 * 256, dtype=torch.float32).reshape(19, 256)
    path = tmp_path / "from_gta5_to_cityscapes_on_deeplabv2_best_model.pkl"
    torch.save(proda_container(official_state, prototypes), path)
    segmenter, info = load_segmenter(path)
    assert info["format"] == "proda" and info["backbone"] == "resnet101_deeplab"
    assert info["head"] == "proda" and info["num_classes"] == 19 and info["iteration"] == 1001
    assert torch.equal(info["prototypes"], prototypes)
    assert not segmenter.training
    with torch.no_grad():
        outputs = segmenter(reference_input())
    found = summarize(outputs["logits"], outputs["features"])
    for name, value in found.items():
        expected = torch.tensor(reference[name], dtype=torch.float64)
        assert torch.allclose(torch.tensor(value, dtype=torch.float64), expected, rtol=1e-4, atol=1e-5), name


def test_official_checkpoint_with_a_wrong_shape_names_the_file(tmp_path, official_state):
    state = dict(official_state)
    state["layer5.bottleneck.1.weight"] = torch.zeros(256, 1024, 3, 3)
    path = tmp_path / "edited.pkl"
    torch.save(proda_container(state), path)
    with pytest.raises(
        ValueError,
        match=r"edited\.pkl declares a resnet101_deeplab with 19 classes and the proda head, but its "
        r"weights do not fit.*classifier\.bottleneck\.1\.weight expected \(256, 1280, 3, 3\) found \(256, 1024, 3, 3\)",
    ):
        load_segmenter(path)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"conv1.weight": torch.zeros(1)}, r"no layer5\.head\.1\.weight, so its head is not ProDA's"),
        (
            {"layer5.head.1.weight": torch.zeros(19, 256, 1, 1), "layer3.0.conv1.weight": torch.zeros(1)},
            r"has 1 layer3 blocks; ProDA's backbone is ResNet-101",
        ),
        ({"bn_pretrain.weight": torch.zeros(2048)}, r"extra 'bn_pretrain' BatchNorm"),
    ],
)
def test_unsupported_proda_checkpoints_are_refused_by_name(tmp_path, state, message):
    path = tmp_path / "proda_model.pkl"
    torch.save(proda_container(state), path)
    with pytest.raises(ValueError, match=r"proda_model\.pkl.*" + message):
        load_segmenter(path)


def test_format_detection_names_the_proda_format(tmp_path):
    path = tmp_path / "not_a_model.pkl"
    torch.save({"ResNet101": {"objective_vectors": torch.zeros(2)}}, path)
    with pytest.raises(
        ValueError, match=r"not_a_model\.pkl is not a segmenter checkpoint.*'ResNet101' holding 'model_state'"
    ):
        load_segmenter(path)
    torch.save(proda_container({"conv1.weight": torch.zeros(1)}), path)
    with pytest.raises(ValueError, match=r"not_a_model\.pkl is in the proda format, not official"):
        load_segmenter(path, format="official")
