"""Fault injection, bad inputs: configs, datasets, checkpoints, pseudo-label stores, predictions,
and outputs that already exist. Every case runs the real command in this process and is judged
by ``faults.judge`` (non-zero exit, no traceback, the offending file or key named, no input
changed) or, where the command must cope, by its result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from faults import cli_command, cli_environment, judge, run_cli, tiny_training, tree_digest
from PIL import Image

VAL_STEM = "dunmere_000000_000019"
VAL_IMAGE = f"cityscapes/leftImg8bit/val/dunmere/{VAL_STEM}_leftImg8bit.png"
VAL_LABEL = f"cityscapes/gtFine/val/dunmere/{VAL_STEM}_gtFine_labelIds.png"
TRAIN_IMAGE = "cityscapes/leftImg8bit/train/aldport/aldport_000000_000019_leftImg8bit.png"
SOURCE_IMAGE = "gta5/images/00001.png"
SOURCE_LABEL = "gta5/labels/00001.png"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def garble(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())


def relative_digest(root: Path) -> dict[Path, str]:
    return {Path(path).relative_to(root): value for path, value in tree_digest(root).items()}


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ----------------------------------------------------------------------------- bad config
CONFIG_FAULTS = [
    ("unknown key", ["optim.lrr=0.1"], "optim.lrr"),
    ("unknown section", ["optimm.lr=0.1"], "optimm"),
    ("value of the wrong type", ["optim.lr=fast"], "optim.lr"),
    ("unknown backbone", ["model.backbone=banana"], "model.backbone"),
    ("one class", ["model.num_classes=1"], "model.num_classes"),
    ("unknown method", ["method.name=bogus"], "bogus"),
    ("stop after the poly horizon", ["optim.stop_iter=100000"], "optim.stop_iter"),
    ("negative batch size", ["data.batch_size=-2"], "data.batch_size"),
    ("unknown dataset", ["data.source.name=imagenet"], "data.source.name"),
    ("override without =", ["optim.lr"], "optim.lr"),
    ("unknown device", ["engine.device=tpu"], "engine.device"),
    ("resize with one value", ["data.source.resize=[1]"], "data.source.resize"),
    ("unparsable YAML value", ["optim.lr=[1"], "optim.lr"),
    ("NaN learning rate", ["optim.lr=.nan"], "optim.lr"),
    ("infinite learning rate", ["optim.lr=.inf"], "optim.lr"),
    ("learning rate 'nan'", ["optim.lr=nan"], "optim.lr"),
    ("negative infinite weight decay", ["optim.weight_decay=-.inf"], "optim.weight_decay"),
    ("NaN method weight", ["method.aux_loss_weight=.NaN"], "method.aux_loss_weight"),
]
CONFIG_FILE_FAULTS = [
    ("unknown preset", None, "no_such_preset"),
    ("YAML syntax error", "method: {name: source_only\n", "broken.yaml"),
    ("YAML list, not a mapping", "- 1\n- 2\n", "broken.yaml"),
]


@pytest.mark.parametrize("command", ["dump-config", "train"])
@pytest.mark.parametrize("case, overrides, named", CONFIG_FAULTS, ids=[c[0] for c in CONFIG_FAULTS])
def test_bad_config_override(command, case, overrides, named, tiny_benchmark, tmp_path, capsys):
    before = tree_digest(tiny_benchmark)
    preset = (
        ["demo_source_only"]
        if command == "dump-config"
        else ["--config", "demo_source_only", "--output", tmp_path / "run"]
    )
    status, output = run_cli([command, *preset, *overrides], capsys)
    judge(
        "bad config",
        f"{command}: {case}",
        status=status,
        output=output,
        named=[named],
        inputs_before=before,
        inputs_after=tree_digest(tiny_benchmark),
    )


@pytest.mark.parametrize("command", ["dump-config", "train"])
@pytest.mark.parametrize("case, text, named", CONFIG_FILE_FAULTS, ids=[c[0] for c in CONFIG_FILE_FAULTS])
def test_bad_config_file(command, case, text, named, tmp_path, capsys):
    config = "no_such_preset"
    if text is not None:
        config = tmp_path / "broken.yaml"
        config.write_text(text)
    preset = [config] if command == "dump-config" else ["--config", config, "--output", tmp_path / "run"]
    status, output = run_cli([command, *preset], capsys)
    judge(
        "bad config",
        f"{command}: {case}",
        status=status,
        output=output,
        named=[named],
        inputs_before=tree_digest(tmp_path / "broken.yaml") if text else None,
        inputs_after=tree_digest(tmp_path / "broken.yaml") if text else None,
    )


OPTION_FAULTS = [  # (case, argv after the command's required options, text the message must hold)
    ("evaluate --split test (no public labels)", ["evaluate", "--split", "test"], "test split"),
    ("evaluate --device cuda without CUDA", ["evaluate", "--device", "cuda"], "--device cpu"),
    ("predict --device cuda without CUDA", ["predict", "--device", "cuda"], "--device cpu"),
    ("pseudo-label --device cuda without CUDA", ["pseudo-label", "--device", "cuda"], "--device cpu"),
    ("pseudo-label --input-size 0 0", ["pseudo-label", "--input-size", "0", "0"], "--input-size"),
]


@pytest.mark.parametrize("case, argv, named", OPTION_FAULTS, ids=[c[0] for c in OPTION_FAULTS])
def test_bad_command_line_option(case, argv, named, tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    command, *options = argv
    before = tree_digest(tiny_benchmark, tiny_checkpoint)
    # The command's defaults first; argparse lets the options of the case override them.
    status, output = run_cli(
        [*checkpoint_argv(command, tiny_checkpoint, tiny_benchmark, tmp_path / "out"), *options], capsys
    )
    judge(
        "bad config",
        case,
        status=status,
        output=output,
        named=[named],
        inputs_before=before,
        inputs_after=tree_digest(tiny_benchmark, tiny_checkpoint),
    )


# ---------------------------------------------------------------------------- bad dataset
DATASET_FAULTS = {  # name -> (file it breaks, how); None: the whole root is missing
    "missing root": (None, None),
    "truncated image": ("image", truncate),
    "image of random bytes": ("image", garble),
    "missing label": ("label", Path.unlink),
    "truncated label": ("label", truncate),
    "empty split": ("split", None),
}
# command -> the files it reads; unlabelled commands have no label faults.
DATASET_COMMANDS = {
    "evaluate": {"image": VAL_IMAGE, "label": VAL_LABEL, "split": "cityscapes/leftImg8bit/val"},
    "evaluate --workers 2": {"image": VAL_IMAGE, "label": VAL_LABEL, "split": "cityscapes/leftImg8bit/val"},
    "data check": {"image": VAL_IMAGE, "label": VAL_LABEL, "split": "cityscapes/leftImg8bit/val"},
    "pseudo-label": {"image": TRAIN_IMAGE, "split": "cityscapes/leftImg8bit/train"},
    "pseudo-label --workers 2": {"image": TRAIN_IMAGE, "split": "cityscapes/leftImg8bit/train"},
    "train": {"image": SOURCE_IMAGE, "label": SOURCE_LABEL, "split": "gta5/images"},
}
DATASET_CASES = [
    (command, fault)
    for command, files in DATASET_COMMANDS.items()
    for fault, (kind, _) in DATASET_FAULTS.items()
    if kind is None or kind in files
]


def dataset_argv(command: str, root: Path, checkpoint: Path, benchmark: Path, output: Path) -> list:
    if command.startswith("evaluate"):
        workers = "2" if "workers" in command else "0"
        return [
            "evaluate",
            "--checkpoint",
            checkpoint,
            "--dataset",
            "cityscapes",
            "--root",
            root / "cityscapes",
            "--output",
            output,
            "--device",
            "cpu",
            "--workers",
            workers,
        ]
    if command == "data check":
        return ["data", "check", "--dataset", "cityscapes", "--root", root / "cityscapes", "--split", "val"]
    if command.startswith("pseudo-label"):
        workers = "2" if "workers" in command else "0"
        return [
            "pseudo-label",
            "--checkpoint",
            checkpoint,
            "--dataset",
            "cityscapes",
            "--root",
            root / "cityscapes",
            "--output",
            output,
            "--device",
            "cpu",
            "--workers",
            workers,
        ]
    return [
        "train",
        "--config",
        "demo_source_only",
        "--output",
        output,
        *tiny_training(benchmark),
        f"data.source.root={root / 'gta5'}",
    ]


@pytest.mark.parametrize("command, fault", DATASET_CASES, ids=[f"{c}: {f}" for c, f in DATASET_CASES])
def test_bad_dataset(command, fault, tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    files = DATASET_COMMANDS[command]
    kind, damage = DATASET_FAULTS[fault]
    root = tmp_path / "missing" if kind is None else copy_tree(tiny_benchmark, tmp_path / "data")
    if kind == "split":  # every image of the split gone; the message names the dataset root
        for image in list((root / files["split"]).rglob("*.png")):
            image.unlink()
        broken = root / files["split"].split("/")[0]
    elif kind is not None:
        broken = root / files[kind]
        damage(broken)
    named = str(tmp_path / "missing") if kind is None else str(broken)
    before = tree_digest(tmp_path / "data", tiny_checkpoint) if kind is not None else None
    status, output = run_cli(dataset_argv(command, root, tiny_checkpoint, tiny_benchmark, tmp_path / "out"), capsys)
    judge(
        "bad dataset",
        f"{command}: {fault}",
        status=status,
        output=output,
        named=[named],
        inputs_before=before,
        inputs_after=tree_digest(tmp_path / "data", tiny_checkpoint) if kind is not None else None,
    )


# ------------------------------------------------------------------------- bad checkpoint
def _save(payload, path: Path) -> None:
    torch.save(payload, path)


CHECKPOINT_FAULTS = {
    "missing file": lambda path, good: None,
    "empty file": lambda path, good: path.write_bytes(b""),
    "truncated": lambda path, good: path.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
    "random bytes": lambda path, good: garble(path),
    "a text file": lambda path, good: path.write_text('{"not": "a checkpoint"}'),
    "a torch list": lambda path, good: _save([1, 2, 3], path),
    "a foreign dict": lambda path, good: _save({"state_dict": {"w": torch.zeros(1)}}, path),
    "weights unlike the declared model": lambda path, good: _save(
        {
            **torch.load(good, weights_only=False),
            "model": {**torch.load(good, weights_only=False)["model"], "backbone": "resnet34"},
        },
        path,
    ),
}
CHECKPOINT_COMMANDS = [
    "evaluate",
    "predict",
    "pseudo-label",
    "export-checkpoint",
    "train init_checkpoint",
    "train --resume",
]


def checkpoint_argv(command: str, checkpoint: Path, benchmark: Path, output: Path) -> list:
    if command == "evaluate":
        return [
            "evaluate",
            "--checkpoint",
            checkpoint,
            "--dataset",
            "cityscapes",
            "--root",
            benchmark / "cityscapes",
            "--output",
            output,
            "--device",
            "cpu",
            "--workers",
            "0",
        ]
    if command == "predict":
        return [
            "predict",
            "--checkpoint",
            checkpoint,
            "--images",
            benchmark / VAL_IMAGE,
            "--output",
            output,
            "--device",
            "cpu",
        ]
    if command == "pseudo-label":
        return [
            "pseudo-label",
            "--checkpoint",
            checkpoint,
            "--dataset",
            "cityscapes",
            "--root",
            benchmark / "cityscapes",
            "--output",
            output,
            "--device",
            "cpu",
            "--workers",
            "0",
        ]
    if command == "export-checkpoint":
        return ["export-checkpoint", checkpoint, "--output", output / "official.pth"]
    if command == "train init_checkpoint":
        return [
            "train",
            "--config",
            "demo_source_only",
            "--output",
            output,
            *tiny_training(benchmark),
            f"model.init_checkpoint={checkpoint}",
        ]
    return [
        "train",
        "--config",
        "demo_source_only",
        "--output",
        checkpoint.parent,
        "--resume",
        *tiny_training(benchmark),
    ]


# Training builds the model its config names and takes only weights from the file, so a file that
# misdeclares its model is a fault only where the declaration is trusted; a resume needs last.pth
# only when there is one.
CHECKPOINT_CASES = [
    (command, fault)
    for command in CHECKPOINT_COMMANDS
    for fault in CHECKPOINT_FAULTS
    if not (command.startswith("train") and fault == "weights unlike the declared model")
    and not (command == "train --resume" and fault == "missing file")
]


@pytest.mark.parametrize("command, fault", CHECKPOINT_CASES, ids=[f"{c}: {f}" for c, f in CHECKPOINT_CASES])
def test_bad_checkpoint(command, fault, tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    if command == "train --resume":
        # The run folder of an interrupted run whose last.pth is the broken file.
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.yaml").write_text("# the run's config\n")
        checkpoint = run / "last.pth"
    else:
        checkpoint = tmp_path / "model.pth"
    CHECKPOINT_FAULTS[fault](checkpoint, tiny_checkpoint)
    inputs = [path for path in (checkpoint, tiny_benchmark) if path.exists()]
    before = tree_digest(*inputs)
    status, output = run_cli(checkpoint_argv(command, checkpoint, tiny_benchmark, tmp_path / "out"), capsys)
    judge(
        "bad checkpoint",
        f"{command}: {fault}",
        status=status,
        output=output,
        named=[str(checkpoint)],
        inputs_before=before,
        inputs_after=tree_digest(*inputs),
    )


def test_resume_with_another_config_names_the_difference(tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    run = copy_tree(tiny_checkpoint.parent, tmp_path / "run")
    before = tree_digest(run / "last.pth", tiny_benchmark)
    status, output = run_cli(
        [
            "train",
            "--config",
            "demo_source_only",
            "--output",
            run,
            "--resume",
            *tiny_training(tiny_benchmark),
            "optim.lr=0.5",
        ],
        capsys,
    )
    judge(
        "bad checkpoint",
        "train --resume: another config",
        status=status,
        output=output,
        named=[str(run / "last.pth"), "optim.lr"],
        inputs_before=before,
        inputs_after=tree_digest(run / "last.pth", tiny_benchmark),
    )


# ------------------------------------------------------------------------------ bad store
def _first(store: Path, folder: str, suffix: str) -> Path:
    return min((store / folder).rglob(f"*{suffix}"))


def _swap_label(store: Path) -> Path:
    """A valid PNG of another image in place of the first label: decodes, but is not what was written."""
    labels = sorted((store / "labels").rglob("*.png"))
    labels[0].write_bytes(labels[1].read_bytes())
    return labels[0]


def _damaged(path: Path, damage) -> Path:
    damage(path)
    return path


STORE_FAULTS = {  # name -> damage(store) -> the file the message must name
    "manifest of broken JSON": lambda s: _damaged(s / "manifest.json", lambda p: p.write_text("{bad")),
    "manifest missing": lambda s: _damaged(s / "manifest.json", Path.unlink),
    "manifest a JSON list": lambda s: _damaged(s / "manifest.json", lambda p: p.write_text("[]")),
    "stats.json missing": lambda s: _damaged(s / "stats.json", Path.unlink),
    "stats.json of broken JSON": lambda s: _damaged(s / "stats.json", lambda p: p.write_text("{")),
    "truncated label PNG": lambda s: _damaged(_first(s, "labels", ".png"), truncate),
    "truncated entropy PNG": lambda s: _damaged(_first(s, "entropy", ".png"), truncate),
    "label PNG missing": lambda s: _damaged(_first(s, "labels", ".png"), Path.unlink),
    "entropy PNG missing": lambda s: _damaged(_first(s, "entropy", ".png"), Path.unlink),
    "image record missing": lambda s: _damaged(_first(s, "image_stats", ".json"), Path.unlink),
    "image record of broken JSON": lambda s: _damaged(_first(s, "image_stats", ".json"), lambda p: p.write_text("{")),
    "label PNG of another image": _swap_label,
}


@pytest.mark.parametrize("method", ["pseudo_label_only", "cra"])
@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_training_on_a_bad_store(method, fault, tiny_benchmark, tiny_store, tmp_path, capsys):
    store = copy_tree(tiny_store, tmp_path / "store")
    named = STORE_FAULTS[fault](store)
    before = tree_digest(store, tiny_benchmark)
    status, output = run_cli(
        [
            "train",
            "--config",
            f"demo_{method}",
            "--output",
            tmp_path / "run",
            *tiny_training(tiny_benchmark, batch="target"),
            f"method.pseudo_label_store={store}",
        ],
        capsys,
    )
    judge(
        "bad store",
        f"train {method}: {fault}",
        status=status,
        output=output,
        named=[str(named)],
        inputs_before=before,
        inputs_after=tree_digest(store, tiny_benchmark),
    )


REDONE_FAULTS = [
    "truncated label PNG",
    "truncated entropy PNG",
    "label PNG missing",
    "entropy PNG missing",
    "image record missing",
    "image record of broken JSON",
    "label PNG of another image",
    "stats.json missing",
]


@pytest.mark.parametrize("fault", REDONE_FAULTS)
def test_pseudo_label_rerun_redoes_damaged_images(fault, tiny_benchmark, tiny_checkpoint, tiny_store, tmp_path, capsys):
    store = copy_tree(tiny_store, tmp_path / "store")
    STORE_FAULTS[fault](store)
    (store / "labels" / ".left.png.tmp12345").write_bytes(b"half a file")  # a killed writer's temp file
    before = tree_digest(tiny_benchmark, tiny_checkpoint)
    status, output = run_cli(checkpoint_argv("pseudo-label", tiny_checkpoint, tiny_benchmark, store), capsys)
    relative = lambda digest, root: {Path(k).relative_to(root): v for k, v in digest.items()}  # noqa: E731
    same = relative(tree_digest(store), store) == relative(tree_digest(tiny_store), tiny_store)
    judge(
        "bad store",
        f"pseudo-label rerun: {fault}",
        status=status,
        output=output,
        expect_error=False,
        same_result=same,
        inputs_before=before,
        inputs_after=tree_digest(tiny_benchmark, tiny_checkpoint),
    )


# ------------------------------------------------------------------------ bad predictions
def write_predictions(benchmark: Path, folder: Path, suffix: str, *, label_ids: bool) -> list[Path]:
    """Predictions = the val labels themselves, as train IDs or label IDs: a known mIoU of 100 on present classes."""
    from crossregion.data.datasets import build_dataset

    dataset = build_dataset("cityscapes", benchmark / "cityscapes", "val")
    to_label_id = dataset.label_set.train_id_to_cityscapes_id()
    paths = []
    for index, name in enumerate(dataset.names):
        train_ids = dataset.load_label(index).astype(np.uint8)
        path = folder / f"{name.rsplit('/', 1)[-1]}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_label_id[train_ids] if label_ids else train_ids).save(path)
        paths.append(path)
    return paths


def _put_value(path: Path, value: int, pixels: int = 16) -> None:
    array = np.array(Image.open(path))
    array.flat[:pixels] = value
    Image.fromarray(array).save(path)


def _renamed_to_label_ids(path: Path) -> Path:
    renamed = path.with_name(path.name.replace("_trainIds", "_labelIds"))
    path.rename(renamed)
    return renamed


def _to_label_ids(path: Path) -> None:
    from crossregion.data.labels import label_set_for

    to_label_id = label_set_for(19).train_id_to_cityscapes_id()
    Image.fromarray(to_label_id[np.array(Image.open(path))]).save(path)


PREDICTION_FAULTS = {  # name -> (file suffix, label IDs?, damage(first file) -> the file to name)
    "trainIds holding 16 pixels of 20": ("_trainIds.png", False, lambda f: _damaged(f, lambda p: _put_value(p, 20))),
    "labelIds holding 255": ("_labelIds.png", True, lambda f: _damaged(f, lambda p: _put_value(p, 255))),
    "labelIds holding train IDs": ("_labelIds.png", False, lambda f: _damaged(f, lambda p: _put_value(p, 255))),
    "mixed suffixes": ("_trainIds.png", False, _renamed_to_label_ids),
    "values of neither kind": (".png", False, lambda f: _damaged(f, lambda p: _put_value(p, 200))),
    "plain names, one file of label IDs": (".png", False, lambda f: _damaged(f, _to_label_ids)),
    "RGB picture": ("_trainIds.png", False, lambda f: _damaged(f, lambda p: Image.new("RGB", (64, 32)).save(p))),
    "truncated PNG": ("_trainIds.png", False, lambda f: _damaged(f, truncate)),
    "random bytes": ("_trainIds.png", False, lambda f: _damaged(f, garble)),
    "wrong size": ("_trainIds.png", False, lambda f: _damaged(f, lambda p: Image.new("L", (10, 6)).save(p))),
    "prediction missing": ("_trainIds.png", False, lambda f: _damaged(f, Path.unlink).name.split("_trainIds")[0]),
    "file of no image": (
        "_trainIds.png",
        False,
        lambda f: Path(shutil.copy(f, f.with_name("zurich_000000_000019.png"))),
    ),
}


@pytest.mark.parametrize("fault", list(PREDICTION_FAULTS))
def test_bad_predictions(fault, tiny_benchmark, tmp_path, capsys):
    suffix, label_ids, damage = PREDICTION_FAULTS[fault]
    files = write_predictions(tiny_benchmark, tmp_path / "pred", suffix, label_ids=label_ids)
    named = damage(files[0])
    before = tree_digest(tmp_path / "pred", tiny_benchmark)
    status, output = run_cli(
        [
            "evaluate-predictions",
            "--dataset",
            "cityscapes",
            "--root",
            tiny_benchmark / "cityscapes",
            "--predictions",
            tmp_path / "pred",
            "--output",
            tmp_path / "out",
        ],
        capsys,
    )
    judge(
        "bad predictions",
        fault,
        status=status,
        output=output,
        named=[str(named)],
        inputs_before=before,
        inputs_after=tree_digest(tmp_path / "pred", tiny_benchmark),
    )


@pytest.mark.parametrize(
    "suffix, label_ids, extra",
    [
        ("_trainIds.png", False, []),
        ("_labelIds.png", True, []),
        (".png", True, ["--id-type=label"]),
    ],
    ids=["trainIds named", "labelIds named", "plain names, --id-type label"],
)
def test_predictions_are_scored_in_the_right_id_space(suffix, label_ids, extra, tiny_benchmark, tmp_path, capsys):
    write_predictions(tiny_benchmark, tmp_path / "pred", suffix, label_ids=label_ids)
    status, output = run_cli(
        [
            "evaluate-predictions",
            "--dataset",
            "cityscapes",
            "--root",
            tiny_benchmark / "cityscapes",
            "--predictions",
            tmp_path / "pred",
            "--output",
            tmp_path / "out",
            *extra,
        ],
        capsys,
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text()) if status == 0 else {}
    scored = [iou for iou in metrics.get("per_class_iou", {}).values() if iou is not None]
    # The predictions are the labels: every scored class is perfect.
    judge(
        "bad predictions",
        f"right ID space: {suffix} {' '.join(extra)}".strip(),
        status=status,
        output=output,
        expect_error=False,
        same_result=bool(scored) and all(iou == 100.0 for iou in scored),
    )


# ----------------------------------------------------------------------- existing outputs
def output_argv(command: str, output: Path, benchmark: Path, checkpoint: Path) -> list:
    return {
        "train": ["train", "--config", "demo_source_only", "--output", output, *tiny_training(benchmark)],
        "evaluate": checkpoint_argv("evaluate", checkpoint, benchmark, output),
        "predict": [
            "predict",
            "--checkpoint",
            checkpoint,
            "--images",
            benchmark / VAL_IMAGE,
            "--output",
            output,
            "--device",
            "cpu",
        ],
        "pseudo-label": checkpoint_argv("pseudo-label", checkpoint, benchmark, output),
        "evaluate-predictions": [
            "evaluate-predictions",
            "--dataset",
            "cityscapes",
            "--root",
            benchmark / "cityscapes",
            "--predictions",
            benchmark,
            "--output",
            output,
        ],
        "pipeline": ["pipeline", "--config", "demo", "--output", output],
        "demo": ["demo", "--output", output],
        "data synth": [
            "data",
            "synth",
            output,
            "--source-images",
            "1",
            "--target-train-images",
            "1",
            "--target-val-images",
            "1",
            "--height",
            "32",
            "--width",
            "64",
        ],
        "export-checkpoint": ["export-checkpoint", checkpoint, "--output", output],
    }[command]


OUTPUT_COMMANDS = [
    "train",
    "evaluate",
    "predict",
    "pseudo-label",
    "evaluate-predictions",
    "pipeline",
    "demo",
    "data synth",
    "export-checkpoint",
]


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
@pytest.mark.parametrize("fault", ["output is the other kind", "a file above the output"])
def test_unusable_output_path(command, fault, tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    wants_file = command == "export-checkpoint"
    blocker = tmp_path / "taken"
    if fault == "output is the other kind" and wants_file:
        blocker.mkdir()
        (blocker / "keep.txt").write_text("mine")
        output = blocker
    else:
        blocker.write_text("mine")
        output = blocker if fault == "output is the other kind" else blocker / "sub" / "out"
    before = tree_digest(blocker, tiny_benchmark, tiny_checkpoint)
    status, output_text = run_cli(output_argv(command, output, tiny_benchmark, tiny_checkpoint), capsys)
    judge(
        "existing outputs",
        f"{command}: {fault}",
        status=status,
        output=output_text,
        named=[str(blocker)],
        inputs_before=before,
        inputs_after=tree_digest(blocker, tiny_benchmark, tiny_checkpoint),
    )


def test_train_refuses_a_finished_run_without_resume(tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    run = copy_tree(tiny_checkpoint.parent, tmp_path / "run")
    before = tree_digest(run, tiny_benchmark)
    status, output = run_cli(output_argv("train", run, tiny_benchmark, tiny_checkpoint), capsys)
    judge(
        "existing outputs",
        "train: a finished run without --resume",
        status=status,
        output=output,
        named=[str(run), "--resume"],
        inputs_before=before,
        inputs_after=tree_digest(run, tiny_benchmark),
    )


SYNTH = [
    "--source-images",
    "2",
    "--target-train-images",
    "2",
    "--target-val-images",
    "1",
    "--height",
    "32",
    "--width",
    "64",
]


@pytest.mark.parametrize("case", ["foreign files", "a benchmark of another seed", "a benchmark of another size"])
def test_synth_refuses_a_folder_of_something_else(case, tmp_path, capsys):
    out = tmp_path / "bench"
    if case == "foreign files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        assert run_cli(["data", "synth", out, *SYNTH], capsys)[0] == 0
    before = tree_digest(out)
    other = ["--seed", "1"] if case == "a benchmark of another seed" else ["--height", "48"]
    status, output = run_cli(["data", "synth", out, *SYNTH, *other], capsys)
    judge(
        "existing outputs",
        f"data synth: {case}",
        status=status,
        output=output,
        named=[str(out), "--force"],
        inputs_before=before,
        inputs_after=tree_digest(out),
    )


@pytest.mark.parametrize("case", ["--force over another seed", "same arguments again"])
def test_synth_force_and_rerun_give_a_fresh_benchmark(case, tmp_path, capsys):
    fresh, out = tmp_path / "fresh", tmp_path / "bench"
    assert run_cli(["data", "synth", fresh, *SYNTH], capsys)[0] == 0
    first = SYNTH + (["--seed", "1"] if case.startswith("--force") else [])
    assert run_cli(["data", "synth", out, *first], capsys)[0] == 0
    (out / "gta5" / "images" / "00002.png").write_bytes(b"damaged")  # a rerun restores it
    status, output = run_cli(
        ["data", "synth", out, *SYNTH, *(["--force"] if case.startswith("--force") else [])], capsys
    )
    relative = lambda root: {Path(k).relative_to(root): v for k, v in tree_digest(root).items()}  # noqa: E731
    judge(
        "existing outputs",
        f"data synth: {case}",
        status=status,
        output=output,
        expect_error=False,
        same_result=relative(out) == relative(fresh),
    )


def test_export_over_its_own_input_is_refused(tiny_checkpoint, tmp_path, capsys):
    checkpoint = Path(shutil.copy(tiny_checkpoint, tmp_path / "model.pth"))
    before = tree_digest(checkpoint)
    status, output = run_cli(["export-checkpoint", checkpoint, "--output", checkpoint], capsys)
    judge(
        "existing outputs",
        "export-checkpoint X --output X",
        status=status,
        output=output,
        named=[str(checkpoint), "CHECKPOINT"],
        inputs_before=before,
        inputs_after=tree_digest(checkpoint),
    )


@pytest.mark.parametrize("where", ["the images folder", "a folder inside it"])
def test_predict_into_its_images_folder_is_refused(where, tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    images = copy_tree(tiny_benchmark / "cityscapes" / "leftImg8bit" / "val", tmp_path / "images")
    output = images if where == "the images folder" else images / "predictions"
    before = tree_digest(images, tiny_checkpoint)
    status, text = run_cli(
        ["predict", "--checkpoint", tiny_checkpoint, "--images", images, "--output", output, "--device", "cpu"], capsys
    )
    judge(
        "existing outputs",
        f"predict --output inside --images: {where}",
        status=status,
        output=text,
        named=[str(output), str(images), "--images"],
        inputs_before=before,
        inputs_after=tree_digest(images, tiny_checkpoint),
    )


def test_pseudo_label_into_the_dataset_root_is_refused(tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    root = copy_tree(tiny_benchmark, tmp_path / "data")
    store = root / "cityscapes" / "pseudo_labels"
    before = tree_digest(root, tiny_checkpoint)
    status, output = run_cli(checkpoint_argv("pseudo-label", tiny_checkpoint, root, store), capsys)
    judge(
        "existing outputs",
        "pseudo-label --output inside --root",
        status=status,
        output=output,
        named=[str(store), "--root"],
        inputs_before=before,
        inputs_after=tree_digest(root, tiny_checkpoint),
    )


def read_only_command(folder: Path, argv: list) -> list[str]:
    """``crossregion ARGV`` with ``folder`` read-only: by its mode, or, for root (whom modes do not
    stop), by a read-only bind mount in a private mount namespace."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return cli_command(argv)
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root without unshare -m: no way to make a folder read-only")
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(folder), *cli_command(argv)]


def test_evaluate_into_a_read_only_output_fails_before_inference(tiny_benchmark, tiny_checkpoint, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    before = tree_digest(tiny_benchmark, tiny_checkpoint)
    done = subprocess.run(
        read_only_command(output, checkpoint_argv("evaluate", tiny_checkpoint, tiny_benchmark, output)),
        env=cli_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = done.stdout + done.stderr
    judge(
        "existing outputs",
        "evaluate into a read-only --output",
        status=done.returncode,
        output=text,
        named=[f"cannot write into --output {output}"],
        inputs_before=before,
        inputs_after=tree_digest(tiny_benchmark, tiny_checkpoint),
        harm="evaluating" in text,  # the images were run through the model before the failure
    )


def test_predict_names_dangling_links_among_the_images(tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    images = copy_tree(tiny_benchmark / "cityscapes" / "leftImg8bit" / "val", tmp_path / "images")
    link = images / "gone_leftImg8bit.png"
    link.symlink_to(tmp_path / "deleted.png")
    before = tree_digest(images, tiny_checkpoint)
    status, output = run_cli(
        ["predict", "--checkpoint", tiny_checkpoint, "--images", images, "--output", tmp_path / "o", "--device", "cpu"],
        capsys,
    )
    judge(
        "bad dataset",
        "predict: a dangling link among the images",
        status=status,
        output=output,
        named=[str(link)],
        inputs_before=before,
        inputs_after=tree_digest(images, tiny_checkpoint),
    )


# ------------------------------------------------------------- foreign files under an output
DEMO_FOREIGN = [
    "a user's datasets and notes (demo --output .)",
    "notes beside a benchmark of other arguments",
    "a user's folder inside a benchmark of other arguments",
]


@pytest.mark.parametrize("case", DEMO_FOREIGN)
def test_demo_never_empties_a_folder_it_did_not_write(case, tiny_benchmark, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    if case.startswith("a user's datasets"):  # the README's layout, without the generator's synth.json
        copy_tree(tiny_benchmark / "gta5", data / "gta5")
        copy_tree(tiny_benchmark / "cityscapes", data / "cityscapes")
        (data / "NOTES.txt").write_text("where these came from\n")
    else:
        copy_tree(tiny_benchmark, data)  # a tiny benchmark: not the demo's arguments
        if case.startswith("notes"):
            (data / "NOTES.txt").write_text("mine\n")
        else:
            (data / "gta5" / "extra").mkdir()
            (data / "gta5" / "extra" / "00001.png").write_bytes(b"mine")
    before = tree_digest(data)
    status, output = run_cli(["demo", "--output", "."], capsys)
    judge(
        "foreign files under an output",
        f"demo: {case}",
        status=status,
        output=output,
        named=["data holds files the demo did not write", "--output"],
        inputs_before=before,
        inputs_after=tree_digest(data),
    )


# ------------------------------------------------------------------------ override parsing
OVERRIDE_VALUES = [  # (case, value typed after "data.source.root=", what the config must hold)
    ("' #' in a path", "data/gta5 #v2", "data/gta5 #v2"),
    ("'#' at the start", "#data", "#data"),
    ("': ' in a path", "runs/a: b", "runs/a: b"),
    ("spaces in a path", "my data/gta5 v2", "my data/gta5 v2"),
    ("a double-quoted path with ' #'", '"data/gta5 #v2"', "data/gta5 #v2"),
    ("a single-quoted path with a quote", "'it''s here'", "it's here"),
    ("a quote inside a plain path", "it's/gta5", "it's/gta5"),
]


@pytest.mark.parametrize("case, typed, expected", OVERRIDE_VALUES, ids=[c[0] for c in OVERRIDE_VALUES])
def test_override_value_is_what_was_typed(case, typed, expected, capsys):
    status, output = run_cli(["dump-config", "demo_source_only", f"data.source.root={typed}"], capsys)
    shown = yaml.safe_load(output)["data"]["source"]["root"] if status == 0 else None
    judge(
        "override parsing",
        f"dump-config: {case}",
        status=status,
        output=output,
        expect_error=False,
        same_result=shown == expected,
    )


OVERRIDE_FAULTS = [  # (case, override, text the message must hold)
    ("number followed by a comment", "optim.lr=0.001 #fast", "optim.lr"),
    ("list followed by a comment", "data.source.resize=[32, 64] # small", "data.source.resize"),
    ("quoted value followed by text", 'data.source.root="data/gta5" v2', "data.source.root"),
    ("mapping where a string goes", "data.source.root=a: b", None),
]


@pytest.mark.parametrize("case, override, named", OVERRIDE_FAULTS, ids=[c[0] for c in OVERRIDE_FAULTS])
def test_override_text_that_cannot_be_the_value_is_refused(case, override, named, tiny_benchmark, tmp_path, capsys):
    # Training on a root that names a folder that does not exist: "a: b" is a path, and is missing.
    argv = ["train", "--config", "demo_source_only", "--output", tmp_path / "run", *tiny_training(tiny_benchmark)]
    if named is None:
        override, named = f"data.source.root={tiny_benchmark / 'gta5'}: b", f"{tiny_benchmark / 'gta5'}: b"
    before = tree_digest(tiny_benchmark)
    status, output = run_cli([*argv, override], capsys)
    judge(
        "override parsing",
        f"train: {case}",
        status=status,
        output=output,
        named=[named],
        inputs_before=before,
        inputs_after=tree_digest(tiny_benchmark),
    )


def test_a_commented_root_is_not_trained_on(tiny_benchmark, tmp_path, capsys):
    """The issue's case: "root=data/gta5 #v2" trained on data/gta5; the folder "gta5 #v2" does not exist."""
    root = f"{tiny_benchmark / 'gta5'} #v2"
    before = tree_digest(tiny_benchmark)
    status, output = run_cli(
        [
            "train",
            "--config",
            "demo_source_only",
            "--output",
            tmp_path / "run",
            *tiny_training(tiny_benchmark),
            f"data.source.root={root}",
        ],
        capsys,
    )
    judge(
        "override parsing",
        "train: data.source.root=PATH #v2",
        status=status,
        output=output,
        named=[root],
        inputs_before=before,
        inputs_after=tree_digest(tiny_benchmark),
    )


# --------------------------------------------------------------------- impossible requests
IMPOSSIBLE_SYNTH = [  # (case, arguments, texts the message must hold)
    ("100000x100000 images", ["--height", "100000", "--width", "100000"], ["--height 100000", "of memory"]),
    (
        "10^8 images of 1024x2048",
        ["--source-images", "100000000", "--height", "1024", "--width", "2048"],
        ["100000", "of disk"],
    ),
    ("no images at all", [f"--{s}-images=0" for s in ("source", "target-train", "target-val")], ["--source-images"]),
    ("no target val images", ["--target-val-images", "0"], ["--target-val-images"]),
]


@pytest.mark.parametrize("case, arguments, named", IMPOSSIBLE_SYNTH, ids=[c[0] for c in IMPOSSIBLE_SYNTH])
def test_synth_refuses_impossible_requests_up_front(case, arguments, named, tmp_path, capsys):
    out = tmp_path / "bench"
    status, output = run_cli(["data", "synth", out, *arguments], capsys)
    judge(
        "impossible requests",
        f"data synth: {case}",
        status=status,
        output=output,
        named=named,
        harm=out.exists(),  # refused before anything was written
    )


# ------------------------------------------------------------- malicious and incomplete checkpoints
class _RunsCode:
    """Pickles as a call of ``os.system``: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("command", CHECKPOINT_COMMANDS)
def test_a_checkpoint_that_runs_code_is_refused(command, tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    good = torch.load(tiny_checkpoint, weights_only=False)
    if command == "train --resume":
        run = copy_tree(tiny_checkpoint.parent, tmp_path / "run")
        checkpoint = run / "last.pth"
        checkpoint.unlink()  # a hard link to the newest model_iter: replaced, not written through
    else:
        checkpoint = tmp_path / "model.pth"
    torch.save({**good, "extra": _RunsCode(marker)}, checkpoint)
    before = tree_digest(checkpoint, tiny_benchmark)
    status, output = run_cli(checkpoint_argv(command, checkpoint, tiny_benchmark, tmp_path / "out"), capsys)
    judge(
        "malicious and incomplete checkpoints",
        f"{command}: a pickle that calls os.system",
        status=status,
        output=output,
        named=[str(checkpoint), "could run code"],
        inputs_before=before,
        inputs_after=tree_digest(checkpoint, tiny_benchmark),
        harm=marker.exists(),
    )


@pytest.mark.parametrize("entry", ["rng", "models", "optimizers", "data_state"])
def test_resume_from_a_checkpoint_missing_an_entry_names_it(entry, tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    run = copy_tree(tiny_checkpoint.parent, tmp_path / "run")
    last = run / "last.pth"
    state = torch.load(last, weights_only=False)
    del state[entry]
    last.unlink()
    torch.save(state, last)
    before = tree_digest(last, tiny_benchmark)
    status, output = run_cli(checkpoint_argv("train --resume", last, tiny_benchmark, tmp_path / "out"), capsys)
    judge(
        "malicious and incomplete checkpoints",
        f"train --resume: no {entry!r} entry",
        status=status,
        output=output,
        named=[str(last), repr(entry)],
        inputs_before=before,
        inputs_after=tree_digest(last, tiny_benchmark),
    )


# ---------------------------------------------------------------------- concurrent writers
@pytest.mark.parametrize("command", ["train", "train --resume", "pipeline", "demo"])
def test_a_folder_being_written_refuses_a_second_writer(command, tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    """The folder is held as a running command holds it (``exclusive_writer``); the second must not touch it.
    tests/test_faults_interrupts.py runs two real ``train`` processes."""
    from crossregion.files import exclusive_writer

    run = copy_tree(tiny_checkpoint.parent, tmp_path / "run")
    argv = {
        "train": output_argv("train", run, tiny_benchmark, tiny_checkpoint),
        "train --resume": checkpoint_argv("train --resume", run / "last.pth", tiny_benchmark, tmp_path),
        "pipeline": output_argv("pipeline", run, tiny_benchmark, tiny_checkpoint),
        "demo": output_argv("demo", run, tiny_benchmark, tiny_checkpoint),
    }[command]
    if command == "train":
        (run / "last.pth").unlink()  # a fresh run would otherwise be refused for the finished one
        for checkpoint in run.glob("model_iter*.pth"):
            checkpoint.unlink()
    if command == "demo":  # past the benchmark step: the demo's data is up to date
        (run / "data").mkdir()
        (run / "data" / "synth.json").write_text(json.dumps(demo_synth_summary()))
    with exclusive_writer(run):
        before = tree_digest(run)
        status, output = run_cli(argv, capsys)
        after = tree_digest(run)
    judge(
        "concurrent writers",
        f"{command} into a folder another process writes",
        status=status,
        output=output,
        named=[str(run), f"PID {os.getpid()}"],
        inputs_before=before,
        inputs_after=after,
    )


def demo_synth_summary() -> dict:
    from crossregion.app.demo import SYNTH_ARGUMENTS
    from crossregion.synth.benchmark import GENERATOR_VERSION

    return {"generator_version": GENERATOR_VERSION, "source_layout": "gta5", **SYNTH_ARGUMENTS}


# ------------------------------------------------------------ moved and copied run folders
def write_pipeline_config(path: Path, benchmark: Path) -> Path:
    """A pipeline of one-iteration stages: source, one CDA method, BN, pseudo labels, CRA, a panel."""
    overrides = [override for override in tiny_training(benchmark, 1) if not override.startswith("data.source")]
    config = {
        "target": {"name": "cityscapes", "root": str(benchmark / "cityscapes")},
        "dataset_roots": {"gta5": str(benchmark / "gta5"), "cityscapes": str(benchmark / "cityscapes")},
        "common_overrides": [*overrides, "data.source.resize=[32, 64]"],
        "source": "demo_source_only",
        "oracle": None,
        "cda": {"so": {"preset": "demo_source_only", "overrides": ["model.init_checkpoint=$source_checkpoint"]}},
        "cda_methods": ["so"],
        "cra": {"preset": "demo_source_only", "overrides": ["model.init_checkpoint=$cda_checkpoint"]},
        "baselines": {},
        "device": "cpu",
        "panel_images": 1,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_benchmark, tmp_path_factory) -> tuple[Path, Path]:
    """(pipeline config, a finished run of it)."""
    from crossregion.cli import main

    root = tmp_path_factory.mktemp("fault_pipeline")
    config = write_pipeline_config(root / "pipeline.yaml", tiny_benchmark)
    assert main(["pipeline", "--config", str(config), "--output", str(root / "run")]) == 0
    return config, root / "run"


def stage_results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def without_paths(results: dict) -> dict:
    """The figures of results.json, without the paths it writes them under."""
    return {method: {k: v for k, v in row.items() if k != "panel"} for method, row in results["methods"].items()}


def rerun_stages(results: dict) -> set[str]:
    return {name for name, stage in results["stages"].items() if not stage["skipped"]}


ANOTHER_SOURCE = "source={preset: demo_source_only, overrides: [engine.seed=7]}"
ANOTHER_CRA = "cra.overrides=[model.init_checkpoint=$cda_checkpoint, optim.lr=0.0123]"


def test_a_moved_pipeline_reads_only_its_own_stages(tiny_pipeline, tmp_path, monkeypatch, capsys):
    """mv pl/ref2 pl/moved, a new run into pl/ref2, then a changed CRA stage in pl/moved: it must
    train from pl/moved's CDA model, and every other stage of pl/moved must be its own."""
    config, _ = tiny_pipeline
    monkeypatch.chdir(tmp_path)  # run folders spelled relative to the working directory
    assert run_cli(["pipeline", "--config", config, "--output", "pl/ref2"], capsys)[0] == 0
    first = stage_results(Path("pl/ref2"))
    Path("pl/ref2").rename("pl/moved")
    assert run_cli(["pipeline", "--config", config, "--output", "pl/ref2", ANOTHER_SOURCE], capsys)[0] == 0
    before = tree_digest(Path("pl/ref2"))
    status, output = run_cli(["pipeline", "--config", config, "--output", "pl/moved", ANOTHER_CRA], capsys)
    results = stage_results(Path("pl/moved")) if status == 0 else {"stages": {}, "methods": {}}
    cra_config = yaml.safe_load((Path("pl/moved") / "03_cra_so" / "config.yaml").read_text()) if status == 0 else {}
    started_from = Path(cra_config.get("model", {}).get("init_checkpoint") or "/nowhere").resolve()
    judge(
        "moved and copied run folders",
        "pipeline: a moved run folder, a new run under its old name",
        status=status,
        output=output,
        expect_error=False,
        same_result=rerun_stages(results) == {"03_cra_so", "03_cra_so_analysis"}
        and started_from == (tmp_path / "pl" / "moved" / "01_cda_so" / "final.pth")
        and results["methods"]["so"]["cda"] == first["methods"]["so"]["cda"],
        inputs_before=before,
        inputs_after=tree_digest(Path("pl/ref2")),
    )


def test_a_copied_pipeline_outlives_its_original(tiny_pipeline, tmp_path, monkeypatch, capsys):
    config, _ = tiny_pipeline
    monkeypatch.chdir(tmp_path)
    assert run_cli(["pipeline", "--config", config, "--output", "pl/original"], capsys)[0] == 0
    first = stage_results(Path("pl/original"))
    shutil.copytree("pl/original", "pl/copy")
    shutil.rmtree("pl/original")
    status, output = run_cli(["pipeline", "--config", config, "--output", "pl/copy"], capsys)
    results = stage_results(Path("pl/copy")) if status == 0 else {"stages": {"?": {"skipped": False}}}
    judge(
        "moved and copied run folders",
        "pipeline: a copied run folder, the original removed",
        status=status,
        output=output,
        expect_error=False,
        same_result=not rerun_stages(results) and without_paths(results) == without_paths(first),
    )


def test_a_stage_whose_files_changed_reruns(tiny_pipeline, tmp_path, capsys):
    config, reference = tiny_pipeline
    run = copy_tree(reference, tmp_path / "run")
    # Another valid checkpoint in place of the CDA model: what the later stages were built from is gone.
    (run / "01_cda_so" / "final.pth").write_bytes((run / "00_source" / "final.pth").read_bytes())
    status, output = run_cli(["pipeline", "--config", config, "--output", run], capsys)
    results = stage_results(run) if status == 0 else {"stages": {}}
    judge(
        "moved and copied run folders",
        "pipeline: a stage's checkpoint replaced",
        status=status,
        output=output,
        expect_error=False,
        same_result=rerun_stages(results) == set(results["stages"]) - {"00_source"}
        and (run / "01_cda_so.previous1" / "final.pth").exists(),
    )


def test_every_replaced_stage_generation_is_kept(tiny_pipeline, tmp_path, capsys, caplog):
    config, reference = tiny_pipeline
    run = copy_tree(reference, tmp_path / "run")
    original = relative_digest(run / "03_cra_so")
    for lr in ("0.0123", "0.0456"):
        override = f"cra.overrides=[model.init_checkpoint=$cda_checkpoint, optim.lr={lr}]"
        status, output = run_cli(["pipeline", "--config", config, "--output", run, override], capsys)
        assert status == 0, output
    judge(
        "moved and copied run folders",
        "pipeline: a stage replaced twice",
        status=status,
        output=output,
        expect_error=False,
        same_result=relative_digest(run / "03_cra_so.previous1") == original
        and (run / "03_cra_so.previous2" / "stage.json").exists()
        and "0.0123" in (run / "03_cra_so.previous2" / "config.yaml").read_text()
        and f"the old run is kept in {run / '03_cra_so.previous2'}" in caplog.text,
    )


# --------------------------------------------------------------------- damaged run records
def test_a_truncated_stage_record_is_named(tiny_pipeline, tmp_path, capsys):
    config, reference = tiny_pipeline
    run = copy_tree(reference, tmp_path / "run")
    record = run / "00_source" / "stage.json"
    truncate(record)
    before = tree_digest(run)
    status, output = run_cli(["pipeline", "--config", config, "--output", run], capsys)
    judge(
        "damaged run records",
        "pipeline: a truncated stage.json",
        status=status,
        output=output,
        named=[str(record)],
        inputs_before=before,
        inputs_after=tree_digest(run),
    )


def test_report_of_a_truncated_results_file_names_it(tiny_pipeline, tmp_path, capsys):
    _, reference = tiny_pipeline
    run = copy_tree(reference, tmp_path / "run")
    truncate(run / "results.json")
    before = tree_digest(run)
    status, output = run_cli(["report", run, "--output", tmp_path / "report.html"], capsys)
    judge(
        "damaged run records",
        "report: a truncated results.json",
        status=status,
        output=output,
        named=[str(run / "results.json")],
        inputs_before=before,
        inputs_after=tree_digest(run),
    )


@pytest.mark.parametrize("where", ["the last row cut short", "a row before the last broken"])
def test_report_reads_metrics_as_resume_does(where, tiny_checkpoint, tmp_path, capsys):
    run = copy_tree(tiny_checkpoint.parent, tmp_path / "run")
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    assert len(lines) >= 2
    if where.startswith("the last"):
        metrics.write_text("".join(lines) + lines[-1][: len(lines[-1]) // 2])  # a kill while appending
    else:
        metrics.write_text(lines[0][:10] + "\n" + "".join(lines[1:]))
    before = tree_digest(run)
    status, output = run_cli(["report", run, "--output", tmp_path / "report.html"], capsys)
    expect_error = not where.startswith("the last")
    judge(
        "damaged run records",
        f"report: metrics.jsonl with {where}",
        status=status,
        output=output,
        named=[f"{metrics}, line 1"],
        expect_error=expect_error,
        same_result=(tmp_path / "report.html").is_file(),
        inputs_before=before,
        inputs_after=tree_digest(run),
    )
