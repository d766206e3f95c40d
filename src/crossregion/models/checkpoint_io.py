"""Segmenters from checkpoint files: ours and the official FADA/CRA container, both ways;
official IAST files one way (import).

Official container (spec §3.5): ``{"iteration", "feature_extractor", "classifier"[, "model_D"],
"optimizer_*"...}``, each a state dict whose keys may carry DDP's ``module.`` prefix. The backbone
is inferred from the keys and shapes, the class count from the classifier weight, FrozenBN vs
BatchNorm from the presence of ``num_batches_tracked``.

Official IAST files (docs/iast.md) are the raw state dict of the whole DDP-wrapped segmentor:
``module.backbone.*`` (a torchvision ResNet, ``fc.*`` included), ``module.decoder.aspp.conv2d_list.*``
(the same ASPP as ours) and, in warm-up checkpoints, ``module.discriminators.<name>.*``. The network
is ours with other names, so import is a renaming; the classification ``fc`` and the
discriminators are dropped.

Also the ``crossregion export-checkpoint CKPT --output OUT.pth [--ddp-prefix]`` command.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
CHECKPOINT_FORMATS: tuple[str, ...] = ("auto", OFFICIAL_FORMAT, CROSSREGION_FORMAT, IAST_FORMAT)

# IAST key prefixes (after DDP's ``module.``) -> ours. IAST's UpsamplePredictor has no weights.
_IAST_RENAMES: tuple[tuple[str, str], ...] = (
    ("backbone.", "feature_extractor.backbone."),
    ("decoder.aspp.", "classifier."),
)
# IAST keys with no counterpart in a Segmenter: the ImageNet classification layer its ResNet
# keeps (unused in forward) and the warm-up stage's output-space discriminators.
_IAST_DROPPED_PREFIXES: tuple[str, ...] = ("backbone.fc.", "discriminators.")
_IAST_MARKER_KEY = "decoder.aspp.conv2d_list.0.weight"

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


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def detect_format(checkpoint: Any, path: str | Path) -> str:
    """``"crossregion"``, ``"official"`` (FADA/CRA) or ``"iast"``, from the top-level keys.

    Raises:
        ValueError: neither (not a segmenter checkpoint) or both (pass ``format`` explicitly).
    """
    if not isinstance(checkpoint, dict):
        # ValueError, not TypeError: a wrong file is a user error, reported in one line by the CLI.
        raise ValueError(  # noqa: TRY004
            f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict"
        )
    is_ours = checkpoint.get("format") == CROSSREGION_FORMAT
    is_official = "feature_extractor" in checkpoint and "classifier" in checkpoint
    if is_ours and is_official:
        raise ValueError(
            f"{path} looks like both checkpoint formats; pass --format official or crossregion"
        )
    if is_ours:
        return CROSSREGION_FORMAT
    if is_official:
        return OFFICIAL_FORMAT
    if is_iast_state_dict(checkpoint):
        return IAST_FORMAT
    keys = ", ".join(sorted(map(str, checkpoint))[:10])
    raise ValueError(
        f"{path} is not a segmenter checkpoint: expected a crossregion checkpoint "
        "(format='crossregion'), an official FADA/CRA one (keys 'feature_extractor' and "
        "'classifier') or an official IAST state dict (keys 'module.backbone.*' and "
        f"'module.{_IAST_MARKER_KEY}'); found keys: {keys}"
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
        raise ValueError(
            f"{path}: 'classifier' has no conv2d_list.0.weight; "
            "it is not a DeepLabv2 ASPP classifier"
        )
    num_classes = classifier_state["conv2d_list.0.weight"].shape[0]
    if "backbone.layer4.0.conv1.weight" in feature_state:
        layer3_blocks = {
            int(match.group(1)) for key in feature_state if (match := _LAYER3_BLOCK.match(key))
        }
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
    }


def _fine_grained_discriminator_state(states: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The one state dict among ``states`` that is a FADA fine-grained discriminator, if any."""
    candidates = [
        strip_wrapper_prefixes(state)
        for state in states.values()
        if is_state_dict(state)
        and set(strip_wrapper_prefixes(state)) == _FINE_GRAINED_DISCRIMINATOR_KEYS
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
    build_arguments = infer_official_architecture(
        parts["feature_extractor"], parts["classifier"], path
    )
    segmenter_state = {
        f"{name}.{key}": value for name, state in parts.items() for key, value in state.items()
    }
    model_d = checkpoint.get("model_D")
    extras = {
        "iteration": int(checkpoint.get("iteration", 0)),
        "discriminator_state": strip_wrapper_prefixes(model_d) if is_state_dict(model_d) else None,
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
                key = our_prefix + key[len(iast_prefix):]
                break
        segmenter_state[key] = value
    parts = {
        name: {
            key[len(name) + 1 :]: value
            for key, value in segmenter_state.items()
            if key.startswith(name + ".")
        }
        for name in ("feature_extractor", "classifier")
    }
    build_arguments = infer_official_architecture(
        parts["feature_extractor"], parts["classifier"], path
    )
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
            f"{path}: checkpoint key 'model' must hold the build_segmenter arguments "
            "(backbone, num_classes, ...)"
        )
    if not isinstance(models, dict) or not is_state_dict(models.get("segmenter")):
        raise ValueError(f"{path}: checkpoint has no 'models' -> 'segmenter' state dict")
    build_arguments = {
        "backbone": model_arguments["backbone"],
        "num_classes": int(model_arguments["num_classes"]),
        "freeze_bn": bool(model_arguments.get("freeze_bn", False)),
        "multi_level": bool(model_arguments.get("multi_level", False)),
    }
    others = {name: state for name, state in models.items() if name != "segmenter"}
    extras = {
        "iteration": int(checkpoint.get("iteration", 0)),
        "discriminator_state": _fine_grained_discriminator_state(others),
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
) -> tuple[Segmenter, dict[str, Any]]:
    """A segmenter with the weights of a crossregion, official FADA/CRA or official IAST checkpoint.

    Args:
        path: the checkpoint file.
        format: ``"auto"`` (detect from the top-level keys), ``"official"``, ``"crossregion"`` or
            ``"iast"``.
        backbone: the backbone the caller expects, or None to accept what the file holds.
        num_classes: the class count the caller expects, or None to accept what the file holds.
        device: where the model goes.

    Returns:
        (segmenter in eval mode, info) with info keys ``path``, ``format``, ``backbone``,
        ``num_classes``, ``freeze_bn``, ``multi_level``, ``iteration`` and ``discriminator_state``
        (the FADA discriminator's prefix-free state dict: official ``model_D``, or ours when the
        checkpoint holds exactly one; else None).

    Raises:
        FileNotFoundError: no such file.
        ValueError: truncated or non-checkpoint file, unknown format, or weights for another
            architecture / class count; the message names the file and the expected vs found shapes.
    """
    if format not in CHECKPOINT_FORMATS:
        raise ValueError(
            f"unknown checkpoint format {format!r}; choose one of {', '.join(CHECKPOINT_FORMATS)}"
        )
    checkpoint = read_torch_file(path, what="checkpoint")
    found_format = detect_format(checkpoint, path)
    if format != "auto" and format != found_format:
        raise ValueError(
            f"{path} is in the {found_format} format, not {format}; "
            f"pass --format {found_format} or auto"
        )
    readers = {
        OFFICIAL_FORMAT: _read_official,
        CROSSREGION_FORMAT: _read_crossregion,
        IAST_FORMAT: _read_iast,
    }
    reader = readers[found_format]
    build_arguments, segmenter_state, extras = reader(checkpoint, path)

    requested = dict(build_arguments)
    if backbone is not None:
        requested["backbone"] = backbone
    if num_classes is not None:
        requested["num_classes"] = num_classes
    mismatch = describe_state_dict_mismatch(_expected_state(requested), segmenter_state)
    if mismatch:
        found = f"{build_arguments['backbone']} with {build_arguments['num_classes']} classes"
        if requested == build_arguments:
            # The file declares the model asked for, yet its weights do not fit that model as
            # this version builds it: written by another version, or edited.
            raise ValueError(
                f"{path} declares a {found}, but its weights do not fit a {found} as this version of "
                f"crossregion builds it ({mismatch}); it was written by another version or is damaged"
            )
        expected = f"{requested['backbone']} with {requested['num_classes']} classes"
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
    segmenter = _unwrap(segmenter)
    if getattr(segmenter, "aux_classifier", None) is not None:
        logger.warning(
            "the official format has no auxiliary classifier; %s keeps the main one only", path
        )
    prefix = "module." if ddp_prefix else ""

    def official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            prefix + key: value.detach().cpu()
            for key, value in strip_wrapper_prefixes(state).items()
        }

    payload: dict[str, Any] = {
        "iteration": int(iteration),
        "feature_extractor": official_keys(segmenter.feature_extractor.state_dict()),
        "classifier": official_keys(segmenter.classifier.state_dict()),
    }
    if discriminator is not None:
        discriminator_state = (
            discriminator if isinstance(discriminator, dict) else discriminator.state_dict()
        )
        payload["model_D"] = official_keys(discriminator_state)
    save_torch_atomically(payload, path)
