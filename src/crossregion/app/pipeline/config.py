"""The pipeline preset (``configs/pipelines/*.yaml``): which stages run, with which training presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from crossregion.config.io import PIPELINE_PRESET_DIR, apply_overrides, load_raw
from crossregion.eval.selection import CRITERIA, TARGET_CRITERIA
from crossregion.trust import OFFICIAL_RARE_FACTOR, OFFICIAL_RARE_SHARE, OFFICIAL_THRESHOLD

BASELINE_TITLES = {"pseudo_label_only": "pseudo-label only", "entropy_min": "entropy min."}
# ``select:`` value that keeps each run's last checkpoint (the paper's choice).
FINAL_CHECKPOINT = "final"


# ------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class StageSpec:
    """A training stage: a ``crossregion train`` preset plus dotted overrides (placeholders allowed)."""

    preset: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetSpec:
    """The target dataset: ``train_split`` is pseudo-labelled, ``val_split`` scored."""

    name: str
    root: str
    train_split: str = "train"
    val_split: str = "val"
    # (height, width) images are resized to for inference (pseudo labels, evaluation); None = as stored.
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class PseudoLabelSpec:
    """The trust rule the stage-2 store records; CRA and the baselines take theirs from the store,
    and the report measures the regime with the same rule."""

    threshold: float = OFFICIAL_THRESHOLD
    rare_share: float = OFFICIAL_RARE_SHARE
    rare_factor: float = OFFICIAL_RARE_FACTOR


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run. ``cda`` maps a CDA label to its stage; ``cda_methods`` picks which run."""

    target: TargetSpec
    source: StageSpec
    # A CDA stage, or a chain of them (IAST: warm-up then self-training rounds), each starting from
    # the previous one's checkpoint ($previous_checkpoint); the last one is the CDA model.
    cda: dict[str, StageSpec | tuple[StageSpec, ...]]
    cda_methods: tuple[str, ...]
    cra: StageSpec
    # dataset name -> root: replaces ``data.*.root`` of every training stage whose dataset has that name.
    dataset_roots: dict[str, str] = field(default_factory=dict)
    # Applied to every training stage before its own overrides (e.g. engine.seed=1).
    common_overrides: tuple[str, ...] = ()
    oracle: StageSpec | None = None
    # Table-3 baselines, keyed by method name (pseudo_label_only, entropy_min); empty = none.
    baselines: dict[str, StageSpec] = field(default_factory=dict)
    # The CDA methods the baselines run after; None = every one in cda_methods (the paper's
    # Table 3 compares them after FADA only).
    baseline_methods: tuple[str, ...] | None = None
    self_distill: StageSpec | None = None
    # Inference size of the adapted models (CRA, the baselines, self-distillation): their
    # evaluation and the self-distillation pseudo labels. "same" = target.input_size; "full" = the
    # images as stored (official: CRA is tested and pseudo-labels for self-distillation at full
    # 2048x1024, the CDA model at 1024x512); or [height, width].
    adapted_input_size: tuple[int, int] | str = "same"
    # Extra overrides of the CRA and baseline stages after one CDA method, e.g. the model options
    # that CDA model was built with (ProDA's head).
    cra_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pseudo_label: PseudoLabelSpec = field(default_factory=PseudoLabelSpec)
    device: str = "auto"
    # Target-val images in the Fig.-3-style panel.
    panel_images: int = 3
    # Which saved checkpoint of CRA and of each baseline goes on: "final", or the label-free
    # criterion (crossregion.eval.selection) that picks one on unlabelled target train.
    select: str = FINAL_CHECKPOINT

    def __post_init__(self) -> None:
        unknown = [name for name in self.cda_methods if name not in self.cda]
        if unknown or not self.cda_methods:
            raise ValueError(
                f"cda_methods {list(self.cda_methods)} must name at least one of the configured cda stages "
                f"{sorted(self.cda)}; add the stage under cda: or fix cda_methods"
            )
        unknown = [name for name in self.baseline_methods or () if name not in self.cda_methods]
        if unknown:
            raise ValueError(f"baseline_methods {unknown} are not in cda_methods {list(self.cda_methods)}")
        unknown = [name for name in self.cra_overrides if name not in self.cda]
        if unknown:
            raise ValueError(f"cra_overrides {unknown} name no configured cda stage {sorted(self.cda)}")
        unknown = [name for name in self.baselines if name not in BASELINE_TITLES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; known: {sorted(BASELINE_TITLES)}")
        if self.panel_images < 0:
            raise ValueError(f"panel_images must be >= 0, got {self.panel_images}")
        if self.select != FINAL_CHECKPOINT and self.select not in TARGET_CRITERIA:
            reason = "needs labelled source images, which the pipeline does not pass; "
            reason = reason if self.select in CRITERIA else ""
            raise ValueError(
                f"select: {self.select!r} {reason}choose {FINAL_CHECKPOINT} or one of {', '.join(TARGET_CRITERIA)}"
            )


def load_pipeline_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """A pipeline preset (name in ``configs/pipelines/`` or YAML path) with ``key=value`` overrides applied."""
    data = apply_overrides(load_raw(name_or_path, PIPELINE_PRESET_DIR), overrides)
    try:
        return _pipeline_from_dict(data)
    except (TypeError, ValueError, KeyError) as error:
        message = error.args[0] if error.args else str(error)
        raise ValueError(f"pipeline config {name_or_path}: {message}") from error


def _stage_spec(data: Any, key: str) -> StageSpec:
    if isinstance(data, str):
        return StageSpec(preset=data)
    if not isinstance(data, dict) or "preset" not in data:
        raise ValueError(f"{key} must be a preset name or a mapping with preset: and overrides:, got {data!r}")
    _check_keys(data, StageSpec, key)
    return StageSpec(preset=str(data["preset"]), overrides=tuple(str(o) for o in data.get("overrides") or ()))


def _cda_spec(data: Any, key: str) -> StageSpec | tuple[StageSpec, ...]:
    if isinstance(data, list):
        if not data:
            raise ValueError(f"{key} is an empty chain; give at least one stage")
        return tuple(_stage_spec(item, f"{key}[{index}]") for index, item in enumerate(data))
    return _stage_spec(data, key)


def _adapted_input_size(value: Any) -> tuple[int, int] | str:
    if value in ("same", "full"):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ValueError(f"adapted_input_size must be same, full or [height, width], got {value!r}")


def adapted(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` whose target inference size is the adapted models' (``adapted_input_size``)."""
    if cfg.adapted_input_size == "same":
        return cfg
    size = None if cfg.adapted_input_size == "full" else cfg.adapted_input_size
    return dataclasses.replace(cfg, target=dataclasses.replace(cfg.target, input_size=size))


def _check_keys(data: dict, cls: type, key: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [name for name in data if name not in names]
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} in {key}; valid keys: {', '.join(names)}")


def _pipeline_from_dict(data: dict[str, Any]) -> PipelineConfig:
    _check_keys(data, PipelineConfig, "the pipeline config")
    for required in ("target", "source", "cda", "cda_methods", "cra"):
        if required not in data:
            raise KeyError(f"missing key {required!r}")
    target = dict(data["target"])
    _check_keys(target, TargetSpec, "target")
    if target.get("input_size") is not None:
        target["input_size"] = tuple(int(size) for size in target["input_size"])
    pseudo = dict(data.get("pseudo_label") or {})
    _check_keys(pseudo, PseudoLabelSpec, "pseudo_label")
    if not isinstance(data["cda"], dict):
        raise ValueError(f"cda must map a CDA label to its stage, got {data['cda']!r}")
    return PipelineConfig(
        target=TargetSpec(**target),
        source=_stage_spec(data["source"], "source"),
        cda={name: _cda_spec(spec, f"cda.{name}") for name, spec in data["cda"].items()},
        cda_methods=tuple(str(name) for name in data["cda_methods"]),
        cra=_stage_spec(data["cra"], "cra"),
        dataset_roots={str(k): str(v) for k, v in (data.get("dataset_roots") or {}).items()},
        common_overrides=tuple(str(o) for o in data.get("common_overrides") or ()),
        oracle=None if data.get("oracle") is None else _stage_spec(data["oracle"], "oracle"),
        baselines={
            name: _stage_spec(spec, f"baselines.{name}") for name, spec in (data.get("baselines") or {}).items()
        },
        baseline_methods=None
        if data.get("baseline_methods") is None
        else tuple(str(name) for name in data["baseline_methods"]),
        cra_overrides={
            str(name): tuple(str(o) for o in overrides) for name, overrides in (data.get("cra_overrides") or {}).items()
        },
        adapted_input_size=_adapted_input_size(data.get("adapted_input_size", "same")),
        self_distill=None if data.get("self_distill") is None else _stage_spec(data["self_distill"], "self_distill"),
        pseudo_label=PseudoLabelSpec(**{k: float(v) for k, v in pseudo.items()}),
        device=str(data.get("device", "auto")),
        panel_images=int(data.get("panel_images", 3)),
        select=str(data.get("select", FINAL_CHECKPOINT)),
    )


def pipeline_device(cfg: PipelineConfig) -> torch.device:
    from crossregion.dist import select_device

    return select_device(cfg.device, option="device")


def target_dataset(cfg: PipelineConfig, num_classes: int, *, labelled: bool, split: str | None = None):
    from crossregion.data.datasets import build_dataset

    return build_dataset(
        cfg.target.name, cfg.target.root, split or cfg.target.train_split, num_classes=num_classes, labelled=labelled
    )
