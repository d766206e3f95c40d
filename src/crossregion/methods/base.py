"""The method interface: a method declares its models and optimisers and implements one step.

The app builds a method with ``Method.from_config(cfg)`` (the constructor with ``cfg.method``,
``num_classes`` and, where a method overrides it, more keyword arguments), then calls
``check_config(cfg)``, a pure check. The trainer (``engine/trainer.py``) owns the loop. Each
iteration it draws one batch from each of the method's ``required_batches`` (names of
``DataConfig`` fields: ``source`` = labelled source, ``target`` = unlabelled target train) and
calls ``training_step(models, batches, ctx)``. The step decides the order of forward passes,
``ctx.backward(loss)`` and ``ctx.step(name)`` (adversarial methods need that control) and returns
detached loss tensors under stable keys such as ``loss/seg_src``. A step never copies a tensor
to the host: the trainer syncs at its log period. The trainer keeps the models a method names in
``frozen_models()`` (teachers, warm-up copies made with ``frozen_copy``) in eval mode and every
other model in train mode. Before the first step ``on_train_start`` may compute state from the
data (the un-augmented target set comes under ``UNAUGMENTED_TARGET`` when
``needs_unaugmented_target``); ``after_step`` runs once per iteration after every optimiser
stepped (EMA teachers, prototype and threshold updates), and ``state_dict`` /
``load_state_dict`` carry a method's own per-run state through checkpoints and ``--resume``.

Adding a method = one file here with a ``MethodConfig`` subclass (its ``name`` default is the
method's name; ``check_non_negative`` and its siblings check its fields) and a ``Method``
subclass decorated with ``@register_method``, an import in ``methods/__init__.py``, and a YAML
preset (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from crossregion.config.schema import ExperimentConfig, MethodConfig, OptimConfig
from crossregion.dist import unwrap
from crossregion.engine.optim import build_discriminator_adam, build_segmenter_optimizer
from crossregion.engine.trainer import StepContext
from crossregion.registry import METHOD_CONFIGS, Registry

if TYPE_CHECKING:
    from crossregion.data.pseudo_labels import PseudoLabelStore

METHODS: Registry[type[Method]] = Registry("method", filled_by="crossregion.methods")

# Batch kinds a method may require; each is a field of DataConfig.
BATCH_KINDS = ("source", "target")
# Models whose name starts with this get a discriminator optimiser (Adam) by default.
DISCRIMINATOR_PREFIX = "discriminator"
# The name under which ``on_train_start`` gets the un-augmented target set
# (``Method.needs_unaugmented_target``).
UNAUGMENTED_TARGET = "target_unaugmented"


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a method under its config's ``name`` default (written once)."""
    name_field = next(f for f in dataclasses.fields(cls.config_class) if f.name == "name")
    if not isinstance(name_field.default, str):
        raise TypeError(f"{cls.config_class.__name__}.name needs a default: the method's registered name")
    METHODS.register(name_field.default)(cls)
    METHOD_CONFIGS.register(name_field.default)(cls.config_class)
    return cls


class Method:
    """Base class of training methods.

    The app builds a method with ``from_config``; the constructor takes the method's config and
    keyword arguments (what a method needs of the rest of the config, by name).

    Args:
        cfg: this method's config (an instance of ``config_class``).
        num_classes: classes of the segmenter.
    """

    config_class: ClassVar[type[MethodConfig]]
    # DataConfig fields drawn once per iteration, in this order.
    required_batches: ClassVar[tuple[str, ...]] = ("source",)
    # True: ``on_train_start`` reads data.target without augmentation (resized as for evaluation,
    # no flip, crop or jitter), under ``UNAUGMENTED_TARGET`` in its ``datasets``.
    needs_unaugmented_target: ClassVar[bool] = False
    # What model.init_checkpoint is to a method that cannot start without one (the error says
    # it); None: the method trains from whatever the model section builds.
    init_checkpoint_role: ClassVar[str | None] = None

    def __init__(self, cfg: MethodConfig, *, num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        # The pseudo labels that the target batches carry; None: plain target images.
        self.pseudo_label_store: PseudoLabelStore | None = None

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> Method:
        """The method of ``cfg``: the constructor with ``cfg.method`` and the segmenter's class count.

        A method that needs more of ``cfg`` overrides this and passes it by keyword.
        """
        return cls(cfg.method, num_classes=cfg.model.num_classes)

    def check_config(self, cfg: ExperimentConfig) -> None:
        """Raise ``ValueError`` if ``cfg`` lacks data or a model this method needs (before anything
        is built). A pure check: what a method keeps of ``cfg`` comes through ``from_config``."""
        for kind in self.required_batches:
            if kind not in BATCH_KINDS:
                raise ValueError(f"{type(self).__name__} requires unknown batch {kind!r}; known: {BATCH_KINDS}")
            if getattr(cfg.data, kind) is None:
                raise ValueError(f"method {cfg.method.name!r} trains on data.{kind}; set data.{kind} in the config")
        if "source" in self.required_batches and not cfg.data.source.labelled:
            raise ValueError(f"method {cfg.method.name!r} needs labels on data.source; set data.source.labelled: true")
        if self.init_checkpoint_role is not None and cfg.model.init_checkpoint is None:
            raise ValueError(f"method {cfg.method.name} needs model.init_checkpoint: {self.init_checkpoint_role}")

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        """The models this method trains; the segmenter is always ``"segmenter"``."""
        return {"segmenter": segmenter}

    def build_optimizers(self, models: Mapping[str, nn.Module], optim: OptimConfig) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per trained model: SGD (or Adam) on the segmenter with the head at
        ``head_lr_mult``, Adam on each ``discriminator*`` model. Other models (an EMA teacher)
        get none: they change only in ``after_step``.
        """
        optimizers = {"segmenter": build_segmenter_optimizer(models["segmenter"], optim)}
        for name, model in models.items():
            if name.startswith(DISCRIMINATOR_PREFIX):
                optimizers[name] = build_discriminator_adam(model, optim)
        return optimizers

    def frozen_models(self) -> tuple[str, ...]:
        """Models the trainer keeps in eval mode (dropout off, BatchNorm on its running statistics):
        copies without an optimiser, such as frozen teachers and warm-up models. Every other model
        trains in train mode. Default: none.
        """
        return ()

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        """One iteration: forward, ``ctx.backward``, ``ctx.step`` for every optimiser once.

        Args:
            models: ``build_models``'s modules, on the device, DDP-wrapped when distributed.
            batches: one collated batch per ``required_batches`` name, on the device.
            ctx: the trainer's ``StepContext``.

        Returns:
            Detached scalar loss tensors keyed ``loss/<what>_<domain>``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement training_step")

    def on_train_start(self, models: Mapping[str, nn.Module], datasets: Mapping[str, Dataset]) -> None:
        """Runs once before the first iteration of this process, fresh or resumed; default: nothing.

        The place for state computed from the data before training (ProDA's initial class
        prototypes). A resumed run has already restored ``load_state_dict``'s state by then:
        compute only what is missing. ``datasets`` are the training datasets by batch name, plus
        the un-augmented target set under ``UNAUGMENTED_TARGET`` when ``needs_unaugmented_target``.
        """

    def after_step(self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]]) -> None:
        """Runs once per iteration after ``training_step`` stepped every optimiser; default: nothing.

        The place for updates that follow the optimisers (an EMA teacher, class prototypes,
        class thresholds). Whatever it changes outside ``models`` belongs in ``state_dict``.
        """

    def state_dict(self) -> dict[str, Any]:
        """The method's own per-run state (tensors, numbers), saved in every checkpoint; default none."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict``'s state on ``--resume``; default: there is none to restore."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint holds {sorted(state)}")


# Checks of method config fields, for the configs' ``__post_init__``: each raises ``ValueError``
# naming ``method.<key>`` and its value, for the first key that fails.
def check_non_negative(cfg: MethodConfig, *keys: str) -> None:
    """Each of ``keys`` is >= 0 (a loss weight)."""
    for key in keys:
        if getattr(cfg, key) < 0:
            raise ValueError(f"method.{key} must be >= 0, got {getattr(cfg, key)}")


def check_positive(cfg: MethodConfig, *keys: str) -> None:
    """Each of ``keys`` is > 0 (a temperature, a width)."""
    for key in keys:
        if getattr(cfg, key) <= 0:
            raise ValueError(f"method.{key} must be positive, got {getattr(cfg, key)}")


def check_fraction(cfg: MethodConfig, *keys: str) -> None:
    """Each of ``keys`` is in [0, 1] (a probability, a momentum, a threshold)."""
    for key in keys:
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ValueError(f"method.{key} must be in [0, 1], got {getattr(cfg, key)}")


def check_choice(cfg: MethodConfig, key: str, choices: tuple[str, ...]) -> None:
    """``key`` is one of ``choices``."""
    if getattr(cfg, key) not in choices:
        raise ValueError(f"method.{key} must be one of {choices}, got {getattr(cfg, key)!r}")


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Freeze ``module``'s parameters for a generator phase; yields the unwrapped module.

    Inside, use the yielded module: gradients then flow through it to the inputs (the
    segmenter) but none reach its parameters, and DDP's gradient sync is bypassed because
    nothing of it is trained. ``requires_grad`` is restored on exit, even after an error;
    train/eval mode (dropout, BatchNorm) is left alone.
    """
    inner = unwrap(module)
    previous = [(p, p.requires_grad) for p in inner.parameters()]
    for parameter, _ in previous:
        parameter.requires_grad_(False)
    try:
        yield inner
    finally:
        for parameter, requires_grad in previous:
            parameter.requires_grad_(requires_grad)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that no gradient reaches, in eval mode: a teacher or a warm-up model.

    Name it in the method's ``frozen_models`` to keep it in eval mode while training (the trainer
    puts the other models in train mode).
    """
    copied = copy.deepcopy(module)
    copied.requires_grad_(False)
    return copied.eval()
