"""Seconds per iteration and peak memory of each method's training step (issue 4 bench point).

For every method with a demo preset (source_only, adaptsegnet, advent, minent, fada, iast_warmup,
iast, and cra,
pseudo_label_only, entropy_min when present) this builds the preset's model, optimisers and
trainer, and times ``Trainer._run_step`` (zero_grad, the method's step, scaler and schedules:
what one training iteration costs apart from data loading) on fixed random batches of the
preset's crop and batch size. Each method runs in its own subprocess, so the peak RSS
(``getrusage`` max RSS, which includes torch's import and the model build) is that method's
alone; the RSS before the first step is reported too, the difference being what the step adds.

    python bench/method_steps.py              # demo sizes: 2 warm-up + 5 timed iterations
    python bench/method_steps.py --quick      # tiny smoke run (crop 32x64, batch 2)
    python bench/method_steps.py --amp bf16 --channels-last

Prints one line per method and a final ``headline:`` line; ``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (row name, demo preset); rows whose preset does not exist are skipped.
METHOD_PRESETS = (
    ("source_only", "demo_source_only"),
    ("adaptsegnet", "demo_adaptsegnet"),
    ("advent", "demo_advent"),
    ("minent", "demo_minent"),
    ("fada", "demo_fada"),
    ("iast_warmup", "demo_iast_warmup"),
    ("iast", "demo_iast"),
    ("cra", "demo_cra"),
    ("pseudo_label_only", "demo_pseudo_label_only"),
    ("entropy_min", "demo_entropy_min"),
    ("proda_warmup", "demo_proda_warmup"),
    ("proda", "demo_proda"),
    ("proda_distill", "demo_proda_distill"),
    ("self_distill", "demo_self_distill"),
)
QUICK_CROP = (32, 64)
QUICK_BATCH = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: crop 32x64, batch 2, 1+2 iterations")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations; the median is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", default="none", choices=("none", "bf16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.iters = 1, 2
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return 0

    from crossregion.config import available_presets

    presets = set(available_presets())
    rows = []
    for row_name, preset in METHOD_PRESETS:
        if preset not in presets:
            print(f"{row_name:18s} skipped: no preset {preset}")
            continue
        command = [sys.executable, __file__, "--child", preset, *_forwarded(args)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{row_name:18s} failed: {reason}")
            continue
        row = {"method": row_name, **json.loads(result.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(
            f"{row_name:18s} {row['seconds_per_iter']:.3f} s/iter (min {row['min_seconds']:.3f}, max "
            f"{row['max_seconds']:.3f})  peak RSS {row['peak_rss_mib']:.0f} MiB "
            f"(+{row['peak_rss_mib'] - row['rss_before_steps_mib']:.0f} MiB over the built model)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not rows:
        print("headline: no method could be measured")
        return 1
    setting = rows[0]["setting"]
    baseline = next((row["seconds_per_iter"] for row in rows if row["method"] == "source_only"), None)
    parts = [
        f"{row['method']} {row['seconds_per_iter']:.2f}"
        + (f" ({row['seconds_per_iter'] / baseline:.1f}x)" if baseline and row["method"] != "source_only" else "")
        for row in rows
    ]
    largest = max(rows, key=lambda row: row["peak_rss_mib"])
    print(
        f"headline: s/iter on {setting}: {', '.join(parts)}; "
        f"largest peak RSS {largest['peak_rss_mib']:.0f} MiB ({largest['method']})"
    )
    return 0


def _forwarded(args: argparse.Namespace) -> list[str]:
    forwarded = [
        "--warmup",
        str(args.warmup),
        "--iters",
        str(args.iters),
        "--threads",
        str(args.threads),
        "--amp",
        args.amp,
    ]
    return forwarded + (["--quick"] if args.quick else []) + (["--channels-last"] if args.channels_last else [])


def measure(preset: str, args: argparse.Namespace) -> dict:
    """Time one preset's step in this process; returns the row (without the method name)."""
    import torch

    from crossregion.app.train import build_method, build_model
    from crossregion.config import load_config
    from crossregion.engine.trainer import Trainer, set_train_modes

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        # Stage-1 methods start from a checkpoint; a freshly built model stands in (speed only).
        init = Path(scratch) / "init.pth"
        overrides = [
            "engine.device=cpu",
            f"engine.amp={args.amp}",
            f"engine.channels_last={args.channels_last}",
            f"model.init_checkpoint={init}",
        ]
        if args.quick:
            overrides.append(f"data.batch_size={QUICK_BATCH}")
        # The model's architecture, read before the checkpoint that the full config loads exists.
        model_cfg = load_config(preset, [*overrides, "model.init_checkpoint=null", "model.init_backbone_only=false"])
        _write_fresh_checkpoint(init, model_cfg)
        cfg = load_config(preset, overrides)
        if hasattr(cfg.method, "teacher_checkpoint"):
            overrides.append(f"method.teacher_checkpoint={init}")
            cfg = load_config(preset, overrides)
        if hasattr(cfg.method, "pseudo_label_store"):
            store = _write_random_store(Path(scratch) / "store", cfg)
            cfg = load_config(preset, [*overrides, f"method.pseudo_label_store={store}"])
        method = build_method(cfg)
        segmenter, model_args = build_model(cfg.model)
        models = method.build_models(segmenter)
        if hasattr(method, "prototypes"):
            # ProDA computes its prototypes over the target set first; zero ones stand in (speed only).
            from crossregion.methods.proda_prototypes import Prototypes

            prototypes = Prototypes(cfg.model.num_classes, segmenter.feature_channels)
            method.load_state_dict({"prototypes": prototypes.state_dict()})
        for model in models.values():
            if cfg.engine.channels_last:
                model.to(memory_format=torch.channels_last)
        optimizers = method.build_optimizers(models, cfg.optim)
        batches = {kind: _random_batch(cfg, kind, args.quick) for kind in method.required_batches}
        trainer = Trainer(
            cfg=cfg,
            method=method,
            models=models,
            optimizers=optimizers,
            loaders={kind: itertools.repeat(batch) for kind, batch in batches.items()},
            device=torch.device("cpu"),
            run_dir=scratch,
            model_args=model_args,
        )
        set_train_modes(models, optimizers, method.frozen_models())
        rss_before = _max_rss_mib()
        seconds = []
        for iteration in range(args.warmup + args.iters):
            start = time.perf_counter()
            losses = trainer._run_step()
            # Host sync: the step's work must be finished before the clock stops.
            torch.stack([value.float() for value in losses.values()]).sum().item()
            if iteration >= args.warmup:
                seconds.append(time.perf_counter() - start)
        height, width = batches[method.required_batches[0]]["image"].shape[-2:]
        batch_size = batches[method.required_batches[0]]["image"].shape[0]
        return {
            "preset": preset,
            "setting": (
                f"{cfg.model.backbone} batch {batch_size} per loader, {height}x{width}, amp {args.amp}"
                f"{', channels_last' if args.channels_last else ''}, {args.threads} threads"
            ),
            "seconds_per_iter": statistics.median(seconds),
            "min_seconds": min(seconds),
            "max_seconds": max(seconds),
            "rss_before_steps_mib": rss_before,
            "peak_rss_mib": _max_rss_mib(),
            "loss_keys": sorted(losses),
        }


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _random_batch(cfg, kind: str, quick: bool) -> dict:
    """A batch of the preset's crop: labels for labelled data, pseudo labels and entropy for target."""
    import torch

    from crossregion.app.demo import SYNTH_ARGUMENTS

    spec = getattr(cfg.data, kind)
    # Presets without crop or resize train on whole images of the benchmark's size.
    height, width = (
        QUICK_CROP if quick else (spec.crop or spec.resize or (SYNTH_ARGUMENTS["height"], SYNTH_ARGUMENTS["width"]))
    )
    num_classes, batch_size = cfg.model.num_classes, cfg.data.batch_size
    batch = {"image": torch.randn(batch_size, 3, height, width)}
    if spec.labelled:
        batch["mask"] = torch.randint(0, num_classes, (batch_size, height, width))
    else:
        # Extra keys are ignored by methods that do not use them (the CDA methods).
        batch["pseudo_mask"] = torch.randint(0, num_classes, (batch_size, height, width))
        # Normalised entropy lies in [0, 1/K].
        batch["entropy"] = torch.rand(batch_size, height, width) / num_classes
    return batch


def _write_fresh_checkpoint(path: Path, cfg) -> Path:
    """A crossregion-format checkpoint of a randomly initialised segmenter of ``cfg.model``."""
    import torch

    from crossregion.app.train import build_model

    segmenter, model_args = build_model(cfg.model)
    torch.save({"format": "crossregion", "model": model_args, "models": {"segmenter": segmenter.state_dict()}}, path)
    return path


def _write_random_store(path: Path, cfg) -> Path:
    """A one-image pseudo-label store, so the pseudo-label methods can be built without a CDA run."""
    import numpy as np

    from crossregion.data.labels import label_set_for
    from crossregion.data.pseudo_labels import PseudoLabelWriter

    num_classes = cfg.model.num_classes
    label_set = label_set_for(num_classes)
    target = cfg.data.target
    writer = PseudoLabelWriter(
        path,
        {
            "num_classes": num_classes,
            "class_names": list(label_set.class_names),
            "palette": [list(colour) for colour in label_set.palette],
            "dataset": target.name,
            "split": target.split,
            "root": target.root,
            "names": ["bench"],
            "checkpoint": None,
            "input_size": None,
            "flip": False,
            "threshold": 0.01,
            "rare_share": 0.01,
            "rare_factor": 0.5,
        },
    )
    generator = np.random.default_rng(0)
    pseudo_label = np.tile(np.arange(num_classes, dtype=np.uint8), (8, 8))
    entropy = (generator.random(pseudo_label.shape) / num_classes).astype(np.float32)
    writer.write("bench", pseudo_label, entropy)
    writer.finish()
    return path


if __name__ == "__main__":
    sys.exit(main())
