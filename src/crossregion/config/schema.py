"""The typed experiment configuration: frozen dataclasses, one per section.

Every constant from the paper or the official code is a named field here or in a method's
config class (``methods/<name>.py``). Components never read these objects; builders in
``app/train.py`` turn them into keyword arguments. Cross-field rules live in
``__post_init__`` so an invalid combination fails when the config is loaded, not mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

AMP_MODES = ("auto", "none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SEGMENTER_OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("poly", "cosine")
# Segmentation heads, as crossregion.models.HEADS (the config does not import the models).
MODEL_HEADS = ("aspp", "proda")
# How a segmenter's input images are scaled (crossregion.data.transforms.INPUT_NORM_STATS holds the
# numbers): "imagenet" = RGB/255 minus the ImageNet mean, divided by its std (FADA/CRA, IAST and
# every preset but ProDA's); "unit" = RGB/255 only (ProDA's loaders: mean 0, no std).
INPUT_NORMS = ("imagenet", "unit")

# The class counts each dataset's labels can be mapped to (docs/spec.md §5). GTA5, Synscapes and
# Cityscapes store Cityscapes label IDs, so both the 19-class and the 16-class SYNTHIA setting
# apply; SYNTHIA has its own IDs with 16- and 19-class maps. The folder dataset takes a
# user-given ID map, so any count is accepted there.
SUPPORTED_NUM_CLASSES: dict[str, tuple[int, ...]] = {
    "gta5": (19, 16),
    "synthia": (16, 19),
    "synscapes": (19, 16),
    "cityscapes": (19, 16),
}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset split and the transforms applied to it, in the order listed.

    Sizes are ``(height, width)``. A transform is off at its default value.
    """

    name: str
    root: str
    split: str = "train"
    # False for target-train: the samples then carry no ``mask`` key at all.
    labelled: bool = True
    # Fixed resize of every image first (FADA: GTA5 720x1280, Cityscapes 512x1024).
    resize: tuple[int, int] | None = None
    # ColorJitter (brightness, contrast, saturation, hue); FADA CDA source: (0.5, 0.5, 0.5, 0.2).
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    # RandomScale factor range; CRA: (0.5, 1.5).
    scale_range: tuple[float, float] = (1.0, 1.0)
    # RandomCrop after scaling (padding 255 for labels where the image is smaller).
    crop: tuple[int, int] | None = None
    # Horizontal flip with probability 0.5.
    flip: bool = False
    # FADA's class-balanced sampling (docs/spec.md §2.5) instead of shuffled passes; labelled source only.
    # Class presence is read from the labels once and cached in the run folder.
    class_balanced: bool = False

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"dataset {self.name!r}: scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        for key in ("resize", "crop"):
            size = getattr(self, key)
            if size is not None and min(size) <= 0:
                raise ValueError(f"dataset {self.name!r}: {key} must be positive (height, width), got {size}")
        if self.class_balanced and not self.labelled:
            raise ValueError(
                f"dataset {self.name!r}: class_balanced draws images by the classes in their labels, so it "
                "needs labelled: true (labelled source data); remove class_balanced for unlabelled data"
            )


@dataclass(frozen=True)
class DataConfig:
    """Training and validation data. A method says which of ``source``/``target`` it needs."""

    source: DatasetSpec | None = None
    target: DatasetSpec | None = None
    # Periodic evaluation only: reported, never used to pick a checkpoint.
    target_val: DatasetSpec | None = None
    # Global batch per loader per iteration, split evenly across DDP processes.
    batch_size: int = 8
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"data.batch_size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.target is not None and self.target.labelled:
            raise ValueError(
                "data.target is the unlabelled target domain and must set labelled: false; "
                "to train on target labels (the oracle) put the labelled split in data.source"
            )


@dataclass(frozen=True)
class ModelConfig:
    """The segmenter, as ``crossregion.models.build_segmenter`` takes it."""

    backbone: str = "resnet101"
    num_classes: int = 19
    # ImageNet weights of the backbone (a local torchvision state dict file); None = from scratch.
    pretrained: str | None = None
    # FrozenBatchNorm, as FADA's source-only and CDA stages (docs/spec.md §2.3, §2.4).
    freeze_bn: bool = False
    # Auxiliary ASPP on layer3 (AdaptSegNet/ADVENT).
    multi_level: bool = False
    # Segmentation head: "aspp" (DeepLab-v2, FADA/CRA/AdaptSegNet/ADVENT) or "proda" (ProDA's
    # GroupNorm ASPP + SE + bottleneck; its 256-channel prototype features become "features").
    # ProDA's official model is backbone resnet101_deeplab with head proda (docs/proda.md).
    head: str = "aspp"
    # A stage-1 checkpoint (ours or the official FADA/CRA format) to start from.
    init_checkpoint: str | None = None
    # Load only the backbone (``feature_extractor.*``) of init_checkpoint and keep the freshly
    # initialised head(s): starts a model with another head (ProDA's) from a checkpoint with
    # DeepLab-v2's ASPP (the demo ProDA warm-up from demo_source_only). Off: every key must fit.
    init_backbone_only: bool = False
    # The input scaling the model is trained and run with (INPUT_NORMS). Saved in its checkpoints,
    # which every command that feeds it images follows; official ProDA files load as "unit".
    input_norm: str = "imagenet"

    def __post_init__(self) -> None:
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"model.input_norm must be one of {INPUT_NORMS}, got {self.input_norm!r}")
        if self.init_backbone_only and self.init_checkpoint is None:
            raise ValueError("model.init_backbone_only: true needs model.init_checkpoint")
        if self.num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2, got {self.num_classes}")
        if self.head not in MODEL_HEADS:
            raise ValueError(f"model.head must be one of {MODEL_HEADS}, got {self.head!r}")
        if self.head == "proda" and self.multi_level:
            raise ValueError("model.head proda has no multi-level variant; set model.multi_level: false")


@dataclass(frozen=True)
class OptimConfig:
    """Optimisers and the poly schedule (docs/spec.md §1.6, §2.4, §4.1)."""

    # Segmenter optimiser: "sgd" (the paper's, with momentum) or "adam" (torch's default betas,
    # momentum unused). Adam trains the small from-scratch demo models to a useful accuracy in
    # the CPU budget, where SGD does not; paper presets keep SGD.
    name: str = "sgd"
    # Segmenter base learning rate (backbone); the head gets lr * head_lr_mult.
    lr: float = 2.5e-4
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    # Official code: 5e-4 (the CRA paper's text says 1e-4). Adam adds it to the gradient (L2).
    weight_decay: float = 5e-4
    # lr_t = lr * (1 - t / max_iters) ** poly_power, for every optimiser ("poly", FADA/CRA, ProDA),
    # or cosine annealing from lr to lr * cosine_min_ratio over max_iters ("cosine", IAST's
    # CosineAnnealingLR_with_Restart with eta_min 0.001 * lr, one cycle).
    schedule: str = "poly"
    poly_power: float = 0.9
    cosine_min_ratio: float = 0.001
    # Linear warm-up: the schedule's factor is multiplied by min(1, (t + 1) / warmup_iters) for
    # every optimiser. 0 (the official codes) starts at the full base lr.
    warmup_iters: int = 0
    # Poly horizon.
    max_iters: int = 62_500
    # Training stops here; None = max_iters. Official CRA/FADA: 40k of a 62.5k horizon.
    stop_iter: int | None = None
    # Discriminators: Adam (docs/spec.md §1.6, §4.1).
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.9, 0.99)

    def __post_init__(self) -> None:
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {LR_SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.cosine_min_ratio <= 1.0:
            raise ValueError(f"optim.cosine_min_ratio must be in [0, 1], got {self.cosine_min_ratio}")
        if self.name not in SEGMENTER_OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {SEGMENTER_OPTIMIZERS}, got {self.name!r}")
        if self.max_iters <= 0:
            raise ValueError(f"optim.max_iters must be positive, got {self.max_iters}")
        if self.warmup_iters < 0:
            raise ValueError(f"optim.warmup_iters must be 0 (no warm-up) or positive, got {self.warmup_iters}")
        if self.stop_iter is not None and not 0 < self.stop_iter <= self.max_iters:
            raise ValueError(
                f"optim.stop_iter ({self.stop_iter}) must be in 1..optim.max_iters ({self.max_iters}); "
                "max_iters is the poly horizon, stop_iter where training ends"
            )
        if self.lr <= 0 or self.disc_lr <= 0:
            raise ValueError(f"optim.lr and optim.disc_lr must be positive, got {self.lr}, {self.disc_lr}")

    @property
    def last_iter(self) -> int:
        """The iteration at which training ends."""
        return self.max_iters if self.stop_iter is None else self.stop_iter


@dataclass(frozen=True)
class EngineConfig:
    """How the loop runs: device, precision, checkpoints, logging."""

    seed: int = 0
    device: str = "auto"
    # auto: bf16 where the hardware computes it natively (a GPU, or a CPU with AVX-512 BF16/AMX),
    # fp32 otherwise: emulated bf16 on an AVX2-only CPU is ~20x slower than fp32. The run's
    # config.yaml records the resolved choice.
    amp: str = "auto"
    # true, false or auto (on where bf16 is native or on a GPU; no gain in fp32 on CPU).
    channels_last: bool | str = "auto"
    # SyncBatchNorm across DDP processes (the official CRA stage uses it); GPU only.
    sync_bn: bool = False
    checkpoint_period: int = 2000
    # Periodic checkpoints kept on disk; ``last.pth`` and ``final.pth`` are kept besides.
    keep_last: int = 3
    # Evaluate on data.target_val every N iterations (0 = never); reported, not used for selection.
    eval_period: int = 0
    log_period: int = 20
    tensorboard: bool = False
    # torch.use_deterministic_algorithms; needed for bit-exact resume on GPU.
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"engine.amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.channels_last not in (True, False, "auto"):
            raise ValueError(f"engine.channels_last must be true, false or auto, got {self.channels_last!r}")
        if self.device not in DEVICES:
            raise ValueError(f"engine.device must be one of {DEVICES}, got {self.device!r}")
        for key in ("checkpoint_period", "keep_last", "log_period"):
            if getattr(self, key) <= 0:
                raise ValueError(f"engine.{key} must be positive, got {getattr(self, key)}")
        if self.eval_period < 0:
            raise ValueError(f"engine.eval_period must be >= 0, got {self.eval_period}")


@dataclass(frozen=True)
class MethodConfig:
    """Base of the per-method configs; ``name`` picks the class from ``crossregion.methods.METHODS``."""

    name: str


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole run. Loaded with ``crossregion.config.load_config``."""

    method: MethodConfig
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        for key in ("source", "target", "target_val"):
            spec: DatasetSpec | None = getattr(self.data, key)
            if spec is None:
                continue
            supported = SUPPORTED_NUM_CLASSES.get(spec.name)
            if supported is not None and self.model.num_classes not in supported:
                raise ValueError(
                    f"model.num_classes={self.model.num_classes} but data.{key} ({spec.name}) has labels "
                    f"for {' or '.join(map(str, supported))} classes; change model.num_classes or the dataset"
                )
        if self.data.target_val is not None and self.data.target_val.class_balanced:
            raise ValueError(
                "data.target_val is evaluated image by image, not sampled; remove data.target_val.class_balanced"
            )
        if self.data.target_val is not None and not self.data.target_val.labelled:
            raise ValueError("data.target_val is scored against its labels; set data.target_val.labelled: true")
        if self.engine.eval_period > 0 and self.data.target_val is None:
            raise ValueError("engine.eval_period > 0 needs data.target_val; set it or set engine.eval_period: 0")
