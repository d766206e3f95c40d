"""The one training loop every method runs in.

A method owns its step (``methods/base.py``); the trainer owns everything around it: data
order, the poly schedule, mixed precision, the non-finite-loss check, logging, periodic
evaluation and checkpoints. The state it checkpoints is complete (models, optimisers,
schedulers, grad scaler, every rank's RNG, each loader's epoch, position and sampler state),
so a run killed at any moment and resumed ends with the same weights as an uninterrupted
one (``num_workers=0``; deterministic kernels).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from crossregion.config.io import config_to_dict
from crossregion.config.schema import ExperimentConfig
from crossregion.data.sampler import SUB_EPOCH_SIZE, ClassBalancedSampler
from crossregion.dist import all_gather_objects, barrier, get_rank, get_world_size, is_main, unwrap
from crossregion.engine import checkpoint as ckpt
from crossregion.engine.amp import autocast, build_grad_scaler
from crossregion.engine.logging import MetricWriter, ProgressBar
from crossregion.engine.optim import build_scheduler
from crossregion.errors import CrossregionError
from crossregion.files import loader_workers

logger = logging.getLogger(__name__)

EVAL_NOTE = "target_val is reported only; no checkpoint or hyperparameter is selected by it"


class NonFiniteLossError(CrossregionError):
    """A loss became NaN or infinite; the message names the iteration and the loss."""


class ResumableSampler(Sampler[int]):
    """``DistributedSampler`` order (seeded by seed and epoch), started ``start`` samples into the epoch.

    Skipping at the sampler costs nothing, where skipping batches of a loader would load and
    augment them (and consume the RNG that augmentation uses).
    """

    def __init__(self, dataset: Dataset, *, seed: int) -> None:
        self._order = DistributedSampler(
            dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=True, seed=seed, drop_last=False
        )
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self._order.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self._order), self.start, None)

    def __len__(self) -> int:
        return len(self._order) - self.start

    def state_dict(self) -> dict[str, Any]:
        """Empty: the order is a function of the seed and the epoch, which the loader saves."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore (see ``state_dict``)."""


class ResumableClassBalancedSampler(Sampler[int]):
    """Class-balanced draws (``ClassBalancedSampler``, docs/spec.md §2.5): this rank's share, from ``start``.

    One epoch is one draw list. Every rank draws the same list from a generator seeded alike
    and takes every ``world_size``-th index, as ``DistributedSampler`` splits its permutation,
    so the ranks together see the list a single process would. The resume state is the
    generator's state at the epoch's start: restoring it draws the same list again.

    Args:
        class_presence: bool ``[num_images, num_classes]`` (``compute_class_presence``).
        samples_per_epoch: draws per epoch over all ranks (rounded up to whole sub-epochs).
        seed: seed of the sampler's own generator, the same on every rank.
        sub_epoch_size: draws between resets of the class counts.
    """

    def __init__(
        self,
        class_presence: np.ndarray,
        *,
        samples_per_epoch: int,
        seed: int,
        sub_epoch_size: int = SUB_EPOCH_SIZE,
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self._draws = ClassBalancedSampler(
            class_presence, samples_per_epoch, sub_epoch_size=sub_epoch_size, generator=self.generator
        )
        self.rank, self.world_size = get_rank(), get_world_size()
        self.samples_per_rank = len(self._draws) // self.world_size
        self.epoch_start_state = self.generator.get_state()
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """An epoch begins: its list is drawn from the generator's current state (kept for resume)."""
        self.epoch_start_state = self.generator.get_state()

    def __iter__(self) -> Iterator[int]:
        share = list(self._draws)[self.rank :: self.world_size][: self.samples_per_rank]
        return iter(share[self.start :])

    def __len__(self) -> int:
        return self.samples_per_rank - self.start

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.epoch_start_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" not in state:
            raise KeyError(
                "the checkpoint's data_state has no class-balanced sampler state; "
                "it was written by a run without data.source.class_balanced"
            )
        self.generator.set_state(state["generator"])
        self.epoch_start_state = self.generator.get_state()


class InfiniteLoader:
    """Endless batches of one dataset: a new epoch (``set_epoch``) whenever one is exhausted.

    Args:
        dataset: map-style dataset of sample dicts.
        batch_size: batch of this process (the global batch divided by the world size).
        num_workers: loader processes; resume is exact only with 0 (workers carry their own RNG).
        seed: shuffling seed, the same on every rank so the ranks split one permutation.
        name: for error messages (``source``, ``target``).
        sampler: where the indices come from; default: a ``ResumableSampler`` (a shuffled pass
            over the dataset per epoch).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        num_workers: int,
        seed: int,
        name: str,
        sampler: ResumableSampler | ResumableClassBalancedSampler | None = None,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler if sampler is not None else ResumableSampler(dataset, seed=seed)
        self.batch_size = batch_size
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"data.{name} has {len(dataset)} images, fewer than one batch of {batch_size} per process; "
                "lower data.batch_size or add images"
            )
        # A private generator: creating a loader iterator draws a seed from it, and drawing from
        # the global RNG would make the data order depend on when an epoch started.
        self._loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=loader_workers(num_workers),
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
        )
        self.epoch = 0
        self.position = 0  # batches already drawn in this epoch
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> Any:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.position * self.batch_size
            self._iterator = iter(self._loader)
        batch = next(self._iterator)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.position, self._iterator = int(state["epoch"]), int(state["position"]), None
        self.sampler.load_state_dict(state.get("sampler", {}))


class StepContext:
    """What a method's ``training_step`` may do to the optimisation state.

    ``backward`` is grad-scaler aware and runs outside autocast; ``step(name)`` steps the
    named optimiser through the scaler and clears its gradients. Every optimiser must be
    stepped exactly once per iteration (the trainer checks).
    """

    def __init__(
        self,
        *,
        iteration: int,
        device: torch.device,
        optimizers: Mapping[str, torch.optim.Optimizer],
        scaler: torch.amp.GradScaler,
    ) -> None:
        self.iteration = iteration
        self.device = device
        self._optimizers = optimizers
        self._scaler = scaler
        self.stepped: list[str] = []

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled for fp16); gradients accumulate until ``step``."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            self._scaler.scale(loss).backward()

    def step(self, name: str) -> None:
        """Apply the accumulated gradients with optimiser ``name``, then clear them."""
        if name not in self._optimizers:
            raise KeyError(f"no optimiser {name!r}; this method has {', '.join(self._optimizers)}")
        if name in self.stepped:
            raise RuntimeError(f"optimiser {name!r} stepped twice in iteration {self.iteration}")
        optimizer = self._optimizers[name]
        self._scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.stepped.append(name)


class TrainableMethod(Protocol):
    """What the trainer needs of a method (``methods.base.Method`` is the implementation)."""

    def frozen_models(self) -> tuple[str, ...]: ...

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]: ...

    def on_train_start(self, models: Mapping[str, nn.Module], datasets: Mapping[str, Dataset]) -> None: ...

    def after_step(self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def set_train_modes(
    models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer], frozen: Iterable[str]
) -> None:
    """Train mode for every model except the ``frozen`` ones, which stay in eval mode.

    A frozen model (a teacher, a warm-up copy) runs with dropout off and BatchNorm on its running
    statistics, as the official methods run theirs; a model without an optimiser that is not
    frozen (ProDA's EMA teacher in its official train mode) trains in train mode like the others.

    Raises:
        ValueError: a frozen model is unknown or has an optimiser (it would train in eval mode).
    """
    frozen = set(frozen)
    unknown, trained = frozen - set(models), frozen & set(optimizers)
    if unknown or trained:
        raise ValueError(
            f"frozen models must be models without an optimiser; unknown: {sorted(unknown)}, "
            f"with an optimiser: {sorted(trained)}"
        )
    for name, model in models.items():
        model.train(name not in frozen)


class Trainer:
    """Runs a method from the current iteration to ``cfg.optim.last_iter``.

    Args:
        cfg: the resolved config (engine, optim and data sections are read here).
        method: the method whose ``training_step`` runs each iteration.
        models: name -> module, on ``device`` and DDP-wrapped where several processes run.
        optimizers: name -> optimiser; each gets a poly schedule.
        loaders: batch name (``source``, ``target``) -> ``InfiniteLoader``.
        start_datasets: datasets that only ``method.on_train_start`` reads, by name (no loader).
        device: where batches go.
        run_dir: checkpoints, ``metrics.jsonl``; only rank 0 writes.
        model_args: the ``build_segmenter`` arguments, stored in checkpoints.
        evaluate: segmenter -> metrics dict on target val, for the periodic evaluation.
    """

    def __init__(
        self,
        *,
        cfg: ExperimentConfig,
        method: TrainableMethod,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        loaders: Mapping[str, InfiniteLoader],
        start_datasets: Mapping[str, Dataset] | None = None,
        device: torch.device,
        run_dir: str | Path,
        model_args: Mapping[str, Any],
        evaluate: Callable[[nn.Module], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.method = method
        self.models = dict(models)
        self.optimizers = dict(optimizers)
        self.schedulers = {name: build_scheduler(opt, cfg.optim) for name, opt in self.optimizers.items()}
        self.scaler = build_grad_scaler(device, cfg.engine.amp)
        self.loaders = dict(loaders)
        self.start_datasets = dict(start_datasets or {})
        self.device = device
        self.run_dir = Path(run_dir)
        self.model_args = dict(model_args)
        self.evaluate = evaluate
        self.iteration = 0

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The complete checkpoint (contract in docs/architecture.md). Collective: call on every rank."""
        return {
            "format": ckpt.FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "code_version": ckpt.code_version(),
            "iteration": self.iteration,
            "config": config_to_dict(self.cfg),
            "model": self.model_args,
            "models": {name: unwrap(model).state_dict() for name, model in self.models.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            # One RNG state per rank: each rank augments with its own generator.
            "rng": all_gather_objects(ckpt.capture_rng()),
            "data_state": {name: loader.state_dict() for name, loader in self.loaders.items()},
            "method_state": self.method.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore everything ``state_dict`` saved."""
        for name, model in self.models.items():
            unwrap(model).load_state_dict(state["models"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        self.scaler.load_state_dict(state["scaler"])
        for name, loader in self.loaders.items():
            loader.load_state_dict(state["data_state"][name])
        # Checkpoints written before methods kept state have none.
        self.method.load_state_dict(state.get("method_state", {}))
        rng_states = state["rng"]
        if len(rng_states) != get_world_size():
            logger.warning(
                "checkpoint was written by %d processes, this run has %d: augmentation randomness "
                "will not continue exactly",
                len(rng_states),
                get_world_size(),
            )
        ckpt.restore_rng(rng_states[min(get_rank(), len(rng_states) - 1)])
        self.iteration = int(state["iteration"])

    # ------------------------------------------------------------------------------ loop
    def train(self) -> None:
        """Iterate until ``cfg.optim.last_iter``; checkpoint every period and at the end."""
        engine, last_iter = self.cfg.engine, self.cfg.optim.last_iter
        writer = MetricWriter(self.run_dir, tensorboard=engine.tensorboard) if is_main() else None
        bar = ProgressBar(start=self.iteration, total=last_iter, enabled=is_main())
        if self.evaluate is not None and engine.eval_period > 0:
            logger.info("evaluating on data.target_val every %d iterations: %s", engine.eval_period, EVAL_NOTE)
        # Data-derived state first (restored state is already in place after a resume); it must
        # not move the training RNG, so a resumed run continues exactly.
        rng = ckpt.capture_rng()
        datasets = {name: loader.dataset for name, loader in self.loaders.items()}
        self.method.on_train_start(self.models, {**datasets, **self.start_datasets})
        ckpt.restore_rng(rng)
        set_train_modes(self.models, self.optimizers, self.method.frozen_models())
        window = _LossWindow(self.device)
        window_start, window_start_iter = time.perf_counter(), self.iteration
        try:
            while self.iteration < last_iter:
                losses = self._run_step()
                self.iteration += 1
                window.add(losses, self.iteration)
                at_end = self.iteration == last_iter
                if self.iteration % engine.log_period == 0 or at_end:
                    means = window.flush()  # host sync point: once per log period
                    seconds = (time.perf_counter() - window_start) / (self.iteration - window_start_iter)
                    window_start, window_start_iter = time.perf_counter(), self.iteration
                    if writer is not None:
                        lrs = {f"lr/{n}": opt.param_groups[0]["lr"] for n, opt in self.optimizers.items()}
                        writer.write({"iteration": self.iteration, **means, **lrs, "seconds_per_iter": seconds})
                    bar.update_to(self.iteration, means)
                if self.iteration % engine.checkpoint_period == 0 or at_end:
                    window.check_finite()
                    self._save(final=at_end)
                if (
                    self.evaluate is not None
                    and engine.eval_period > 0
                    and (self.iteration % engine.eval_period == 0 or at_end)
                ):
                    self._evaluate(writer)
        finally:
            bar.close()
            if writer is not None:
                writer.close()

    def _run_step(self) -> dict[str, torch.Tensor]:
        batches = {name: self._to_device(next(loader)) for name, loader in self.loaders.items()}
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        ctx = StepContext(iteration=self.iteration, device=self.device, optimizers=self.optimizers, scaler=self.scaler)
        with autocast(self.device, self.cfg.engine.amp):
            losses = self.method.training_step(self.models, batches, ctx)
        # Internal invariant: a method that forgets an optimiser silently stops training it.
        assert sorted(ctx.stepped) == sorted(self.optimizers), (
            f"{type(self.method).__name__}.training_step stepped {ctx.stepped}, "
            f"expected each of {list(self.optimizers)} once"
        )
        self.scaler.update()
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.method.after_step(self.models, batches)
        return losses

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        moved = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, non_blocking=True)
                if key == "image" and self.cfg.engine.channels_last:
                    value = value.contiguous(memory_format=torch.channels_last)
            moved[key] = value
        return moved

    def _save(self, *, final: bool) -> None:
        state = self.state_dict()
        if is_main():
            path = ckpt.write_checkpoint(state, self.run_dir, keep_last=self.cfg.engine.keep_last, final=final)
            logger.info("saved %s", path)
        barrier()

    def _evaluate(self, writer: MetricWriter | None) -> None:
        # Evaluation must not change the training RNG: a resumed run does not repeat it.
        rng = ckpt.capture_rng()
        if is_main():
            segmenter = unwrap(self.models["segmenter"])
            segmenter.eval()
            with torch.no_grad():
                metrics = self.evaluate(segmenter)
            segmenter.train()
            logger.info("iteration %d: target_val mIoU %.2f (%s)", self.iteration, metrics["miou"], EVAL_NOTE)
            if writer is not None:
                writer.write({"iteration": self.iteration, "eval/miou": metrics["miou"], "eval/note": EVAL_NOTE})
        barrier()
        ckpt.restore_rng(rng)


class _LossWindow:
    """Loss sums over one log window, kept on the device, plus the first non-finite iteration per loss."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        # Per key: a diagnostic logged only every few iterations is averaged over those.
        self.counts: dict[str, int] = {}
        self.first_bad: dict[str, torch.Tensor] = {}

    def add(self, losses: Mapping[str, torch.Tensor], iteration: int) -> None:
        for key, value in losses.items():
            value = value.detach().float()
            self.sums[key] = self.sums.get(key, 0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
            first = self.first_bad.get(key)
            if first is None:
                first = self.first_bad[key] = torch.full((), -1, dtype=torch.long, device=self.device)
            # Stays on the device: no sync here, checked at the log and checkpoint periods.
            first.masked_fill_(~torch.isfinite(value) & (first < 0), iteration)

    def check_finite(self) -> None:
        """Raise naming the first iteration (1-based) and loss that was NaN or infinite."""
        if not self.first_bad:
            return
        firsts = dict(zip(self.first_bad, torch.stack(list(self.first_bad.values())).tolist()))
        bad = {key: it for key, it in firsts.items() if it >= 0}
        if bad:
            key = min(bad, key=bad.get)
            raise NonFiniteLossError(
                f"Loss became infinite or NaN at iteration={bad[key]}! loss {key!r} (first non-finite); "
                f"all non-finite losses and their first iteration: {bad}. Lower optim.lr, check the data, "
                "or use engine.amp=none"
            )

    def flush(self) -> dict[str, float]:
        """Mean of each loss over the window (all ranks averaged); resets the sums."""
        self.check_finite()
        if not self.sums:
            return {}
        keys = list(self.sums)
        means = torch.stack([self.sums[k] / self.counts[k] for k in keys])
        if get_world_size() > 1:
            torch.distributed.all_reduce(means)
            means /= get_world_size()
        self.sums, self.counts = {}, {}
        return dict(zip(keys, means.tolist()))
