"""Fault injection, bad inputs: configs, datasets, checkpoints, pseudo-label stores, predictions,
and outputs that already exist. Every case runs the real command in this process and is judged
by ``faults.judge`` (non-zero exit, no traceback, the offending file or key named, no input
changed) or, where the command must cope, by its result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import judge, run_cli, tiny_training, tree_digest
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
