"""The method interface: a method declares its models and optimisers and implements one step.

The trainer (``engine/trainer.py``) owns the loop. Each iteration it draws one batch from each
of the method's ``required_batches`` (names of ``DataConfig`` fields: ``source`` = labelled
source, ``target`` = unlabelled target train) and calls ``training_step(models, batches, ctx)``.
The step decides the order of forward passes, ``ctx.backward(loss)`` and ``ctx.step(name)``
(adversarial methods need that control) and returns detached loss tensors under stable keys
such as ``loss/seg_src``. A step never copies a tensor to the host: the trainer syncs at its log
period. Before the first step ``on_train_start`` may compute state from the data; around the
step, ``after_step`` runs once per iteration after every optimiser stepped
(EMA teachers, prototype and threshold updates), and ``state_dict`` / ``load_state_dict`` carry
a method's own per-run state through checkpoints and ``--resume``.

Adding a method = one file here with a ``MethodConfig`` subclass (its ``name`` default is the
method's name) and a ``Method`` subclass decorated with ``@register_method``, an import in
``methods/__init__.py``, and a YAML preset (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
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

    Args:
        cfg: this method's config (an instance of ``config_class``).
        num_classes: classes of the segmenter.
    """

    config_class: ClassVar[type[MethodConfig]]
    # DataConfig fields drawn once per iteration, in this order.
    required_batches: ClassVar[tuple[str, ...]] = ("source",)

    def __init__(self, cfg: MethodConfig, *, num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        # The pseudo labels that the target batches carry; None: plain target images.
        self.pseudo_label_store: PseudoLabelStore | None = None

    def check_config(self, cfg: ExperimentConfig) -> None:
        """Raise ``ValueError`` if ``cfg`` lacks data this method needs (before anything is built)."""
        for kind in self.required_batches:
            if kind not in BATCH_KINDS:
                raise ValueError(f"{type(self).__name__} requires unknown batch {kind!r}; known: {BATCH_KINDS}")
            if getattr(cfg.data, kind) is None:
                raise ValueError(f"method {cfg.method.name!r} trains on data.{kind}; set data.{kind} in the config")
        if "source" in self.required_batches and not cfg.data.source.labelled:
            raise ValueError(f"method {cfg.method.name!r} needs labels on data.source; set data.source.labelled: true")

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
        compute only what is missing. ``datasets`` are the training datasets by batch name.
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
