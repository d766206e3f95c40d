"""The method interface: a method declares its models and optimisers and implements one step.

The trainer (``engine/trainer.py``) owns the loop. Each iteration it draws one batch from each
of the method's ``required_batches`` (names of ``DataConfig`` fields: ``source`` = labelled
source, ``target`` = unlabelled target train) and calls ``training_step(models, batches, ctx)``.
The step decides the order of forward passes, ``ctx.backward(loss)`` and ``ctx.step(name)``
(adversarial methods need that control) and returns detached loss tensors under stable keys
such as ``loss/seg_src``. A step never copies a tensor to the host: the trainer syncs at its log
period.

Adding a method = one file here with a ``MethodConfig`` subclass and a ``Method`` subclass
registered in ``METHODS``, an import in ``methods/__init__.py``, and a YAML preset.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from crossregion.config.schema import DatasetSpec, ExperimentConfig, MethodConfig, OptimConfig
from crossregion.engine.dist import unwrap
from crossregion.engine.optim import build_segmenter_optimizer
from crossregion.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")

# Batch kinds a method may require; each is a field of DataConfig.
BATCH_KINDS = ("source", "target")


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

    def check_config(self, cfg: ExperimentConfig) -> None:
        """Raise ``ValueError`` if ``cfg`` lacks data this method needs (before anything is built)."""
        for kind in self.required_batches:
            if kind not in BATCH_KINDS:
                raise ValueError(f"{type(self).__name__} requires unknown batch {kind!r}; known: {BATCH_KINDS}")
            if getattr(cfg.data, kind) is None:
                raise ValueError(f"method {cfg.method.name!r} trains on data.{kind}; set data.{kind} in the config")
        if "source" in self.required_batches and not cfg.data.source.labelled:
            raise ValueError(f"method {cfg.method.name!r} needs labels on data.source; set data.source.labelled: true")

    def build_dataset(self, kind: str, spec: DatasetSpec, num_classes: int) -> Dataset:
        """The training dataset of batch ``kind``; default: ``spec``'s dataset with its transforms.

        CRA and the methods built on it override this to add pseudo labels and entropy maps to
        the target samples, augmented jointly with the image.
        """
        from crossregion.engine.launch import build_train_dataset  # launch imports this module

        return build_train_dataset(spec, num_classes)

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        """The models this method trains; the segmenter is always ``"segmenter"``."""
        return {"segmenter": segmenter}

    def build_optimizers(self, models: Mapping[str, nn.Module], optim: OptimConfig) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per name; default: SGD on the segmenter with the head at ``head_lr_mult``."""
        return {"segmenter": build_segmenter_optimizer(models["segmenter"], optim)}

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: Any
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
