"""Segmenters from checkpoint files: ours and the official FADA/CRA container, both ways; official
IAST and ProDA checkpoints one way (reading).

Official container (docs/spec.md §3.5): ``{"iteration", "feature_extractor", "classifier"[, "model_D"],
"optimizer_*"...}``, each a state dict whose keys may carry DDP's ``module.`` prefix. The backbone
is inferred from the keys and shapes, the class count from the classifier weight, FrozenBN vs
BatchNorm from the presence of ``num_batches_tracked``.

Official IAST files (docs/iast.md) are the raw state dict of the whole DDP-wrapped segmentor:
``module.backbone.*`` (a torchvision ResNet, ``fc.*`` included), ``module.decoder.aspp.conv2d_list.*``
(the same ASPP as ours) and, in warm-up checkpoints, ``module.discriminators.<name>.*``. The network
is ours with other names, so import is a renaming; the classification ``fc`` and the
discriminators are dropped.

ProDA's ``.pkl`` (its ``train.py``): ``{"ResNet101": {"model_state", "objective_vectors"},
"iter", "best_iou"[, "FCDiscriminator"]}``. ``model_state`` is the unwrapped model's state dict
(no ``module.`` prefix): torchvision ResNet key names at the top level (``conv1.weight``,
``layer3.22.bn3.running_var``) and the head under ``layer5.``; ``objective_vectors`` are the class
prototypes (K, 256). It loads as ``resnet101_deeplab`` with ``head="proda"``.

Also the ``crossregion export-checkpoint CKPT --output OUT.pth [--ddp-prefix]`` command.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossregion.dist import unwrap
from crossregion.files import save_torch_atomically
from crossregion.models.deeplabv2 import Segmenter, build_segmenter
from crossregion.models.weights import (
    describe_state_dict_mismatch,
    is_state_dict,
    read_torch_file,
    strip_wrapper_prefixes,
)

logger = logging.getLogger(__name__)

CROSSREGION_FORMAT = "crossregion"
OFFICIAL_FORMAT = "official"
IAST_FORMAT = "iast"

# IAST key prefixes (after DDP's ``module.``) -> ours. IAST's UpsamplePredictor has no weights.
_IAST_RENAMES: tuple[tuple[str, str], ...] = (
    ("backbone.", "feature_extractor.backbone."),
    ("decoder.aspp.", "classifier."),
)
# IAST keys with no counterpart in a Segmenter: the ImageNet classification layer its ResNet
# keeps (unused in forward) and the warm-up stage's output-space discriminators.
_IAST_DROPPED_PREFIXES: tuple[str, ...] = ("backbone.fc.", "discriminators.")
_IAST_MARKER_KEY = "decoder.aspp.conv2d_list.0.weight"
PRODA_FORMAT = "proda"
CHECKPOINT_FORMATS: tuple[str, ...] = ("auto", OFFICIAL_FORMAT, CROSSREGION_FORMAT, IAST_FORMAT, PRODA_FORMAT)

# ProDA's checkpoint: the segmenter's entry is named after its class, ResNet101.
_PRODA_MODEL_ENTRY = "ResNet101"
_PRODA_HEAD_PREFIX = "layer5."
_PRODA_CLASSIFIER_WEIGHT = "layer5.head.1.weight"
# The extra BatchNorm ProDA puts before the head of its SimCLR-initialised students (--bn_clr,
# stages 2 and 3); crossregion has no such layer yet.
_PRODA_BN_CLR_PREFIX = "bn_pretrain."
_PRODA_LAYER3_BLOCK = re.compile(r"^layer3\.(\d+)\.")
_PRODA_RESNET101_LAYER3_BLOCKS = 23

# (bottleneck blocks?, number of layer3 blocks) -> backbone name.
_RESNET_BY_LAYOUT: dict[tuple[bool, int], str] = {
    (False, 2): "resnet18",
    (False, 6): "resnet34",
    (True, 6): "resnet50",
    (True, 23): "resnet101",
}
_FINE_GRAINED_DISCRIMINATOR_KEYS = frozenset(
    f"{layer}.{kind}" for layer in ("D.0", "D.2", "cls1", "cls2") for kind in ("weight", "bias")
)
_LAYER3_BLOCK = re.compile(r"^backbone\.layer3\.(\d+)\.")


def detect_format(checkpoint: Any, path: str | Path) -> str:
    """``"crossregion"``, ``"official"`` (FADA/CRA), ``"iast"`` or ``"proda"``, from the top-level keys.

    Raises:
        ValueError: none (not a segmenter checkpoint) or several (pass ``format`` explicitly).
    """
    if not isinstance(checkpoint, dict):
        # ValueError, not TypeError: a wrong file is a user error, reported in one line by the CLI.
        raise ValueError(  # noqa: TRY004
            f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict"
        )
    is_ours = checkpoint.get("format") == CROSSREGION_FORMAT
    is_official = "feature_extractor" in checkpoint and "classifier" in checkpoint
    proda_entry = checkpoint.get(_PRODA_MODEL_ENTRY)
    is_proda = isinstance(proda_entry, dict) and "model_state" in proda_entry
    found = [
        name
        for name, matches in (
            (CROSSREGION_FORMAT, is_ours),
            (OFFICIAL_FORMAT, is_official),
            (PRODA_FORMAT, is_proda),
        )
        if matches
    ]
    if not found and is_iast_state_dict(checkpoint):
        # A raw state dict has no container keys: tried only when no container matched.
        found = [IAST_FORMAT]
    if len(found) > 1:
        raise ValueError(
            f"{path} looks like several checkpoint formats ({', '.join(found)}); pass --format {' or '.join(found)}"
        )
    if found:
        return found[0]
    keys = ", ".join(sorted(map(str, checkpoint))[:10])
    raise ValueError(
        f"{path} is not a segmenter checkpoint: expected a crossregion checkpoint "
        "(format='crossregion'), an official FADA/CRA one (keys 'feature_extractor' and "
        "'classifier'), an official IAST state dict (keys 'module.backbone.*' and "
        f"'module.{_IAST_MARKER_KEY}') or an official ProDA one (key 'ResNet101' holding 'model_state'); "
        f"found keys: {keys}"
    )


def is_iast_state_dict(checkpoint: Any) -> bool:
    """True for a raw state dict with IAST's segmentor keys (``module.`` prefix or not)."""
    if not is_state_dict(checkpoint):
        return False
    keys = strip_wrapper_prefixes(checkpoint)
    return _IAST_MARKER_KEY in keys and any(key.startswith("backbone.") for key in keys)


def infer_official_architecture(
    feature_state: dict[str, torch.Tensor],
    classifier_state: dict[str, torch.Tensor],
    path: str | Path,
) -> dict[str, Any]:
    """``build_segmenter`` arguments (backbone, num_classes, freeze_bn, multi_level) of an official
    checkpoint, from its (prefix-free) ``feature_extractor`` and ``classifier`` state dicts.

    Raises:
        ValueError: the keys match no known backbone, or the classifier is not an ASPP.
    """
    if "conv2d_list.0.weight" not in classifier_state:
        raise ValueError(f"{path}: 'classifier' has no conv2d_list.0.weight; it is not a DeepLabv2 ASPP classifier")
    num_classes = classifier_state["conv2d_list.0.weight"].shape[0]
    if "backbone.layer4.0.conv1.weight" in feature_state:
        layer3_blocks = {int(match.group(1)) for key in feature_state if (match := _LAYER3_BLOCK.match(key))}
        bottleneck = "backbone.layer1.0.conv3.weight" in feature_state
        layout = (bottleneck, len(layer3_blocks))
        if layout not in _RESNET_BY_LAYOUT:
            raise ValueError(
                f"{path}: 'feature_extractor' is a ResNet with {len(layer3_blocks)} layer3 "
                f"{'Bottleneck' if bottleneck else 'BasicBlock'} blocks, which matches none of "
                f"{', '.join(_RESNET_BY_LAYOUT.values())}"
            )
        backbone = _RESNET_BY_LAYOUT[layout]
        freeze_bn = not any(key.endswith("num_batches_tracked") for key in feature_state)
    elif "backbone.0.weight" in feature_state and "backbone.31.weight" in feature_state:
        backbone, freeze_bn = "vgg16", False
    else:
        keys = ", ".join(list(feature_state)[:5])
        raise ValueError(
            f"{path}: 'feature_extractor' matches no known backbone "
            "(expected backbone.layer4.* for a "
            f"ResNet or backbone.31.* for VGG-16); first keys: {keys}"
        )
    return {
        "backbone": backbone,
        "num_classes": num_classes,
        "freeze_bn": freeze_bn,
        "multi_level": False,
        "head": "aspp",
        # FADA/CRA and IAST normalise with the ImageNet mean and std (docs/spec.md §1.2, docs/iast.md).
        "input_norm": "imagenet",
    }


def _fine_grained_discriminator_state(states: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The one state dict among ``states`` that is a FADA fine-grained discriminator, if any."""
    candidates = [
        strip_wrapper_prefixes(state)
        for state in states.values()
        if is_state_dict(state) and set(strip_wrapper_prefixes(state)) == _FINE_GRAINED_DISCRIMINATOR_KEYS
    ]
    return candidates[0] if len(candidates) == 1 else None


def _read_official(
    checkpoint: dict[str, Any], path: str | Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    parts = {}
    for name in ("feature_extractor", "classifier"):
        if not is_state_dict(checkpoint.get(name)):
            raise ValueError(f"{path}: '{name}' is not a state dict")
        parts[name] = strip_wrapper_prefixes(checkpoint[name])
    build_arguments = infer_official_architecture(parts["feature_extractor"], parts["classifier"], path)
    segmenter_state = {f"{name}.{key}": value for name, state in parts.items() for key, value in state.items()}
    model_d = checkpoint.get("model_D")
    extras = {
        "iteration": int(checkpoint.get("iteration", 0)),
        "discriminator_state": strip_wrapper_prefixes(model_d) if is_state_dict(model_d) else None,
        "prototypes": None,
    }
    return build_arguments, segmenter_state, extras


def _proda_to_segmenter_key(key: str) -> str:
    """An official ProDA key under our names: the head ``layer5.*`` is our ``classifier.*``, every
    other key (stem, layer1..layer4) is a backbone key."""
    if key.startswith(_PRODA_HEAD_PREFIX):
        return "classifier." + key[len(_PRODA_HEAD_PREFIX) :]
    return "feature_extractor.backbone." + key


def _read_proda(
    checkpoint: dict[str, Any], path: str | Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    entry = checkpoint[_PRODA_MODEL_ENTRY]
    if not is_state_dict(entry["model_state"]):
        raise ValueError(f"{path}: '{_PRODA_MODEL_ENTRY}' -> 'model_state' is not a state dict")
    # ProDA saves the unwrapped model; a DataParallel-wrapped save would add ``module.``.
    state = strip_wrapper_prefixes(entry["model_state"])
    if any(key.startswith(_PRODA_BN_CLR_PREFIX) for key in state):
        raise ValueError(
            f"{path} is a ProDA checkpoint with the extra 'bn_pretrain' BatchNorm of its "
            "SimCLR-initialised stage-2/3 students (--bn_clr); crossregion cannot load that "
            "layer yet (stage-1 and warm-up checkpoints load)"
        )
    if _PRODA_CLASSIFIER_WEIGHT not in state:
        keys = ", ".join(list(state)[:5])
        raise ValueError(
            f"{path}: the ProDA model_state has no {_PRODA_CLASSIFIER_WEIGHT}, so its head is not "
            f"ProDA's (Classifier_Module2); first keys: {keys}"
        )
    layer3_blocks = {int(match.group(1)) for key in state if (match := _PRODA_LAYER3_BLOCK.match(key))}
    if len(layer3_blocks) != _PRODA_RESNET101_LAYER3_BLOCKS:
        raise ValueError(
            f"{path}: the ProDA model_state has {len(layer3_blocks)} layer3 blocks; ProDA's "
            f"backbone is ResNet-101 ({_PRODA_RESNET101_LAYER3_BLOCKS} blocks)"
        )
    segmenter_state = {_proda_to_segmenter_key(key): value for key, value in state.items()}
    # Files from PyTorch < 0.4.1 have no BatchNorm step counter; it does not affect the outputs.
    for key in [key for key in segmenter_state if key.endswith(".running_mean")]:
        counter = key[: -len("running_mean")] + "num_batches_tracked"
        segmenter_state.setdefault(counter, torch.tensor(0, dtype=torch.long))
    build_arguments = {
        "backbone": "resnet101_deeplab",
        "num_classes": state[_PRODA_CLASSIFIER_WEIGHT].shape[0],
        # ProDA trains (Sync)BatchNorm with eps 1e-5; FrozenBatchNorm's eps 0 would not match.
        "freeze_bn": False,
        "multi_level": False,
        "head": "proda",
        # ProDA's loaders feed RGB / 255 (mean 0, no std): its models expect that input.
        "input_norm": "unit",
    }
    prototypes = entry.get("objective_vectors")
    extras = {
        "iteration": int(checkpoint.get("iter", 0)),
        "discriminator_state": None,
        "prototypes": prototypes.detach().cpu() if isinstance(prototypes, torch.Tensor) else None,
    }
    return build_arguments, segmenter_state, extras


def _read_iast(
    checkpoint: dict[str, Any], path: str | Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """IAST's raw segmentor state dict renamed to ours, with the ``build_segmenter`` arguments.

    A key that is neither renamed nor dropped stays under its own name, so the shape check of
    ``load_segmenter`` lists it as unexpected instead of it vanishing silently.
    """
    segmenter_state: dict[str, torch.Tensor] = {}
    for key, value in strip_wrapper_prefixes(checkpoint).items():
        if key.startswith(_IAST_DROPPED_PREFIXES):
            continue
        for iast_prefix, our_prefix in _IAST_RENAMES:
            if key.startswith(iast_prefix):
                key = our_prefix + key[len(iast_prefix) :]
                break
        segmenter_state[key] = value
    parts = {
        name: {key[len(name) + 1 :]: value for key, value in segmenter_state.items() if key.startswith(name + ".")}
        for name in ("feature_extractor", "classifier")
    }
    build_arguments = infer_official_architecture(parts["feature_extractor"], parts["classifier"], path)
    # IAST trains nn.BatchNorm2d (FREEZEBN freezes only the affine parameters), so its files
    # always hold num_batches_tracked and load as BatchNorm2d with eps 1e-5, as IAST evaluates.
    # IAST files keep no iteration count; the discriminator is not FADA's, so it is not returned.
    extras = {"iteration": 0, "discriminator_state": None}
    return build_arguments, segmenter_state, extras


def _read_crossregion(
    checkpoint: dict[str, Any], path: str | Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    model_arguments = checkpoint.get("model")
    models = checkpoint.get("models")
    if (
        not isinstance(model_arguments, dict)
        or "backbone" not in model_arguments
        or "num_classes" not in model_arguments
    ):
        raise ValueError(
            f"{path}: checkpoint key 'model' must hold the build_segmenter arguments (backbone, num_classes, ...)"
        )
    if not isinstance(models, dict) or not is_state_dict(models.get("segmenter")):
        raise ValueError(f"{path}: checkpoint has no 'models' -> 'segmenter' state dict")
    build_arguments = {
        "backbone": model_arguments["backbone"],
        "num_classes": int(model_arguments["num_classes"]),
        "freeze_bn": bool(model_arguments.get("freeze_bn", False)),
        "multi_level": bool(model_arguments.get("multi_level", False)),
        # Checkpoints written before the ProDA head existed hold no head: DeepLab-v2's ASPP.
        "head": str(model_arguments.get("head", "aspp")),
        # Checkpoints written before input_norm existed were all trained on ImageNet-normalised input.
        "input_norm": str(model_arguments.get("input_norm", "imagenet")),
    }
    others = {name: state for name, state in models.items() if name != "segmenter"}
    extras = {
        "iteration": int(checkpoint.get("iteration", 0)),
        "discriminator_state": _fine_grained_discriminator_state(others),
        "prototypes": None,
    }
    return build_arguments, strip_wrapper_prefixes(models["segmenter"]), extras


def _expected_state(build_arguments: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Keys and shapes of the segmenter ``build_arguments`` describe, without allocating weights."""
    with torch.device("meta"):
        return build_segmenter(**build_arguments).state_dict()


def load_segmenter(
    path: str | Path,
    *,
    format: str = "auto",
    backbone: str | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    head: str | None = None,
) -> tuple[Segmenter, dict[str, Any]]:
    """A segmenter with the weights of a crossregion, official FADA/CRA, IAST or ProDA checkpoint.

    Args:
        path: the checkpoint file.
        format: ``"auto"`` (detect from the top-level keys), ``"official"``, ``"crossregion"`` or
            ``"iast"`` or ``"proda"``.
        backbone: the backbone the caller expects, or None to accept what the file holds.
        num_classes: the class count the caller expects, or None to accept what the file holds.
        device: where the model goes.
        head: the head the caller expects (``"aspp"``, ``"proda"``), or None to accept the file's.

    Returns:
        (segmenter in eval mode, info) with info keys ``path``, ``format``, ``backbone``,
        ``num_classes``, ``freeze_bn``, ``multi_level``, ``head``, ``input_norm`` (the input scaling
        the model expects, also ``segmenter.input_norm``: ``"unit"`` for ProDA files, ``"imagenet"``
        for FADA/CRA and IAST ones, what ours record), ``iteration``,
        ``discriminator_state`` (the FADA discriminator's prefix-free state dict: official
        ``model_D``, or ours when the checkpoint holds exactly one; else None) and ``prototypes``
        (ProDA's class prototypes, (K, 256), from a ProDA file; else None).

    Raises:
        FileNotFoundError: no such file.
        ValueError: truncated or non-checkpoint file, unknown format, or weights for another
            architecture / class count; the message names the file and the expected vs found shapes.
    """
    if format not in CHECKPOINT_FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {', '.join(CHECKPOINT_FORMATS)}")
    checkpoint = read_torch_file(path, what="checkpoint")
    found_format = detect_format(checkpoint, path)
    if format != "auto" and format != found_format:
        raise ValueError(f"{path} is in the {found_format} format, not {format}; pass --format {found_format} or auto")
    reader = {
        OFFICIAL_FORMAT: _read_official,
        CROSSREGION_FORMAT: _read_crossregion,
        IAST_FORMAT: _read_iast,
        PRODA_FORMAT: _read_proda,
    }[found_format]
    build_arguments, segmenter_state, extras = reader(checkpoint, path)

    requested = dict(build_arguments)
    if backbone is not None:
        requested["backbone"] = backbone
    if num_classes is not None:
        requested["num_classes"] = num_classes
    if head is not None:
        requested["head"] = head

    def described(arguments: dict[str, Any]) -> str:
        head_part = "" if arguments["head"] == "aspp" else f" and the {arguments['head']} head"
        return f"{arguments['backbone']} with {arguments['num_classes']} classes{head_part}"

    if (
        requested != build_arguments
        and requested["backbone"] == build_arguments["backbone"]
        and (requested["num_classes"] == build_arguments["num_classes"])
    ):
        # Only the head differs: both heads may hold the same class count, so say it plainly.
        raise ValueError(f"{path} holds a {described(build_arguments)}, expected a {described(requested)}")
    mismatch = describe_state_dict_mismatch(_expected_state(requested), segmenter_state)
    if mismatch:
        found = described(build_arguments)
        if requested == build_arguments:
            # The file declares the model asked for, yet its weights do not fit that model as
            # this version builds it: written by another version, or edited.
            raise ValueError(
                f"{path} declares a {found}, but its weights do not fit a {found} as this version of "
                f"crossregion builds it ({mismatch}); it was written by another version or is damaged"
            )
        expected = described(requested)
        raise ValueError(f"{path} holds a {found}, expected a {expected}: {mismatch}")

    # Built on the meta device and filled by assignment: no time spent on a random init that the
    # checkpoint overwrites anyway (about 1 s for ResNet-101 on CPU).
    with torch.device("meta"):
        segmenter = build_segmenter(**build_arguments)
    segmenter.load_state_dict(segmenter_state, strict=True, assign=True)
    segmenter.to(device).eval()
    info = {"path": str(path), "format": found_format, **build_arguments, **extras}
    return segmenter, info


def export_official(
    segmenter: nn.Module,
    path: str | Path,
    discriminator: nn.Module | dict[str, torch.Tensor] | None = None,
    iteration: int = 0,
    ddp_prefix: bool = False,
) -> None:
    """Writes ``segmenter`` (and a FADA discriminator) in the official FADA/CRA container.

    The file holds ``iteration``, ``feature_extractor``, ``classifier`` and, when given,
    ``model_D``, with the official key names; ``ddp_prefix=True`` prefixes every key with
    ``module.`` as the official distributed training expects. An auxiliary (multi-level)
    classifier has no place in that format and is left out with a warning. Written atomically.

    Args:
        segmenter: a Segmenter, possibly wrapped by DDP or torch.compile.
        path: output file.
        discriminator: a FineGrainedDiscriminator or its state dict, or None.
        iteration: stored as ``iteration``.
        ddp_prefix: prefix keys with ``module.``.
    """
    segmenter = unwrap(segmenter)
    if getattr(segmenter, "head", "aspp") != "aspp":
        raise ValueError(
            f"cannot write {path}: the official FADA/CRA format holds a DeepLab-v2 ASPP head, "
            f"not the {segmenter.head} head"
        )
    if getattr(segmenter, "input_norm", "imagenet") != "imagenet":
        raise ValueError(
            f"cannot write {path}: the official FADA/CRA code feeds ImageNet-normalised images, and this "
            f"model expects {segmenter.input_norm}-normalised ones"
        )
    if getattr(segmenter, "aux_classifier", None) is not None:
        logger.warning("the official format has no auxiliary classifier; %s keeps the main one only", path)
    prefix = "module." if ddp_prefix else ""

    def official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {prefix + key: value.detach().cpu() for key, value in strip_wrapper_prefixes(state).items()}

    payload: dict[str, Any] = {
        "iteration": int(iteration),
        "feature_extractor": official_keys(segmenter.feature_extractor.state_dict()),
        "classifier": official_keys(segmenter.classifier.state_dict()),
    }
    if discriminator is not None:
        discriminator_state = discriminator if isinstance(discriminator, dict) else discriminator.state_dict()
        payload["model_D"] = official_keys(discriminator_state)
    save_torch_atomically(payload, path)
