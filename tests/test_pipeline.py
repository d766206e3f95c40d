"""``crossregion pipeline`` end to end at a tiny size: stages, skipping, reruns, results.

Every training stage runs ``source_only`` for two iterations on a tiny synthetic benchmark, so
the test exercises the orchestration (wiring, hashes, resume, evaluation, report) without
depending on how long any method takes to learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from crossregion.app.pipeline.config import load_pipeline_config
from crossregion.app.pipeline.run import run_pipeline
from crossregion.synth.benchmark import generate_benchmark

TINY_TRAINING = [
    "model.backbone=resnet18",
    "data.batch_size=2",
    "optim.max_iters=1",
    "optim.stop_iter=1",
    "engine.eval_period=0",
    "engine.device=cpu",
    "engine.log_period=1",
    "data.source.crop=[32, 64]",
]


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_benchmark(root, source_images=4, target_train_images=4, target_val_images=2, height=32, width=64, seed=0)
    return root


def write_config(tmp_path: Path, benchmark: Path) -> Path:
    stage = {"preset": "demo_source_only", "overrides": ["model.init_checkpoint=$cda_checkpoint"]}
    config = {
        "target": {"name": "cityscapes", "root": str(benchmark / "cityscapes")},
        "dataset_roots": {"gta5": str(benchmark / "gta5"), "cityscapes": str(benchmark / "cityscapes")},
        "common_overrides": TINY_TRAINING,
        "source": "demo_source_only",
        "oracle": "demo_oracle",
        "cda": {"so": {"preset": "demo_source_only", "overrides": ["model.init_checkpoint=$source_checkpoint"]}},
        "cda_methods": ["so"],
        "cra": stage,
        "baselines": {"pseudo_label_only": stage},
        "device": "cpu",
        "panel_images": 2,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_pipeline_runs_skips_and_reruns_changed_stages(tmp_path, benchmark):
    config_path = write_config(tmp_path, benchmark)
    output = tmp_path / "run"
    results = run_pipeline(load_pipeline_config(str(config_path)), output)

    expected_stages = {
        "00_source",
        "00_oracle",
        "01_cda_so",
        "01_bn_target_so",
        "02_pseudo_so",
        "03_cra_so",
        "03_cra_so_analysis",
        "03_pseudo_label_only_so",
    }
    assert set(results["stages"]) == expected_stages
    assert not any(stage["skipped"] for stage in results["stages"].values())
    row = results["methods"]["so"]
    for key in ("cda", "bn_target", "cra", "pseudo_label_only"):
        assert 0.0 <= row[key] <= 100.0
    assert 0.0 <= row["trusted_fraction"] <= 1.0
    assert row["untrusted_share"] == pytest.approx(1.0 - row["trusted_fraction"])
    assert (output / "02_pseudo_so" / "store" / "stats.json").exists()
    assert (output / "panel_so.png").stat().st_size > 0
    written = json.loads((output / "results.json").read_text())
    assert written["methods"]["so"]["cra"] == row["cra"]
    markdown = (output / "results.md").read_text()
    assert "| CDA method | base mIoU | +CRA mIoU | Δ |" in markdown
    assert "pseudo-label only" in markdown
    # The mechanism: every trained model's feature gap on the same pixels, per-class coverage.
    mechanism = row["mechanism"]
    assert set(mechanism["feature_gap"]) == {"cda", "cra", "pseudo_label_only"}
    assert len(mechanism["per_class_regime"]) == 19
    assert "Mechanism: does the alignment act?" in markdown and "Per-class trusted coverage" in markdown

    again = run_pipeline(load_pipeline_config(str(config_path)), output)
    assert all(stage["skipped"] for stage in again["stages"].values())
    assert again["methods"] == results["methods"]

    # A changed CRA override reruns CRA and what reads it; the stages before it are kept.
    changed_cfg = load_pipeline_config(
        str(config_path), ["cra.overrides=[model.init_checkpoint=$cda_checkpoint, optim.lr=0.0123]"]
    )
    changed = run_pipeline(changed_cfg, output)
    rerun = {name for name, stage in changed["stages"].items() if not stage["skipped"]}
    assert rerun == {"03_cra_so", "03_cra_so_analysis"}
    # The replaced run is kept aside, not deleted.
    kept = json.loads((output / "03_cra_so.previous1" / "stage.json").read_text())
    assert kept["complete"] and "optim.lr=0.0123" not in json.dumps(kept["payload"])

    # Killed after training but before the stage was recorded: resumes from last.pth at the
    # final iteration (no new training) and reproduces the same model.
    marker = output / "03_cra_so" / "stage.json"
    state = json.loads(marker.read_text())
    marker.write_text(json.dumps({**state, "complete": False}))
    resumed = run_pipeline(changed_cfg, output)
    assert not resumed["stages"]["03_cra_so"]["skipped"]
    assert resumed["stages"]["01_cda_so"]["skipped"]
    assert resumed["methods"]["so"]["cra"] == changed["methods"]["so"]["cra"]


def test_bad_pipeline_configs_fail_clearly(tmp_path, benchmark):
    config_path = write_config(tmp_path, benchmark)
    with pytest.raises(ValueError, match="cda_methods"):
        load_pipeline_config(str(config_path), ["cda_methods=[fada]"])
    with pytest.raises(ValueError, match="unknown key"):
        load_pipeline_config(str(config_path), ["sorce=demo_source_only"])
    cfg = load_pipeline_config(str(config_path), ["cra.overrides=[model.init_checkpoint=$source_checkpoint]"])
    with pytest.raises(ValueError, match="placeholder"):
        run_pipeline(cfg, tmp_path / "run")


def test_every_shipped_pipeline_preset_loads():
    from crossregion.config.io import PIPELINE_PRESET_DIR, available_presets

    names = available_presets(PIPELINE_PRESET_DIR)
    assert {"demo", "gta5_fada_r101"} <= set(names)
    for name in names:
        cfg = load_pipeline_config(name)
        assert cfg.cda_methods, name


def test_every_cda_stage_starts_from_weights_its_model_can_load():
    """A CDA stage wired to the source-only checkpoint must build the source model's structure
    (backbone, classes, single/multi-level): a multi-level preset fails at load time on a
    single-level checkpoint (no aux_classifier.*). A stage not wired to it starts from ImageNet
    weights (model.pretrained), as the official AdaptSegNet/ADVENT code does (docs/spec.md §4.1)."""
    from crossregion.app.pipeline.stages import resolve_training_config
    from crossregion.config.io import PIPELINE_PRESET_DIR, available_presets

    source_checkpoint = "SOURCE_CHECKPOINT.pth"
    for name in available_presets(PIPELINE_PRESET_DIR):
        cfg = load_pipeline_config(name)
        source = resolve_training_config(cfg, cfg.source, {})[0]["model"]
        for method, chain in cfg.cda.items():
            # A chain (IAST): each stage must load the previous stage's weights (the source model's first).
            previous_model, previous_checkpoint = source, source_checkpoint
            for index, spec in enumerate(chain if isinstance(chain, tuple) else (chain,), start=1):
                placeholders = {"source_checkpoint": source_checkpoint, "previous_checkpoint": previous_checkpoint}
                model = resolve_training_config(cfg, spec, placeholders)[0]["model"]
                where = f"pipeline {name}, cda.{method} stage {index} ({spec.preset})"
                started_from = {source_checkpoint: source, previous_checkpoint: previous_model}.get(
                    model["init_checkpoint"]
                )
                previous_model, previous_checkpoint = model, f"STAGE_{index}.pth"
                if started_from is not None:
                    for key in ("backbone", "num_classes", "multi_level"):
                        assert model[key] == started_from[key], (
                            f"{where}: model.{key}={model[key]}, its starting model has {started_from[key]}"
                        )
                    continue
                assert model["init_checkpoint"] is None, (
                    f"{where}: starts from {model['init_checkpoint']}, not a stage output"
                )
                assert model["pretrained"] is not None, f"{where}: neither init_checkpoint nor pretrained weights"


def test_a_substituted_path_is_one_value_even_with_a_hash():
    from crossregion.app.pipeline.config import StageSpec, load_pipeline_config
    from crossregion.app.pipeline.stages import resolve_training_config

    cfg = load_pipeline_config("demo")
    path = "runs/demo #1/01_cda_fada/final.pth"
    spec = StageSpec("demo_cra", ("model.init_checkpoint=$cda_checkpoint",))
    resolved, _ = resolve_training_config(cfg, spec, {"cda_checkpoint": path})
    assert resolved["model"]["init_checkpoint"] == path


def test_adapted_models_run_at_their_own_input_size():
    from crossregion.app.pipeline.config import adapted, load_pipeline_config

    official = load_pipeline_config("gta5_fada_r101")
    assert official.target.input_size == (512, 1024)  # the CDA model: 1024x512
    assert adapted(official).target.input_size is None  # CRA and self-distillation: full resolution
    demo = load_pipeline_config("demo")
    assert adapted(demo) is demo
    assert adapted(load_pipeline_config("demo", ["adapted_input_size=[40,80]"])).target.input_size == (40, 80)


def test_the_documented_pseudo_label_command_is_the_official_stage_2():
    """The README's pseudo-label command feeds the CDA model 1024x512 input, as the official code does."""
    import argparse
    import re
    import shlex

    from crossregion.app import pseudo_label

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    command = re.search(r"crossregion pseudo-label (.*?)\n(?!\s)", readme.replace("\\\n", " "), re.S).group(1)
    parser = argparse.ArgumentParser()
    pseudo_label.add_arguments(parser)
    args = parser.parse_args(shlex.split(command))
    assert args.dataset == "cityscapes" and tuple(args.input_size) == (1024, 512)


def test_two_runs_sharing_an_output_folder_generate_the_benchmark_once(tmp_path):
    """Seeds trained side by side into one output folder: both wait for one generation, neither fails."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from crossregion.app.demo import QUICK_SYNTH_ARGUMENTS, ensure_benchmark\n"
        "ensure_benchmark(Path(sys.argv[1]), QUICK_SYNTH_ARGUMENTS)\n"
    )
    data_dir = tmp_path / "data"
    runs = [subprocess.Popen([sys.executable, "-c", code, str(data_dir)], stderr=subprocess.PIPE) for _ in range(2)]
    errors = [run.communicate()[1].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    summary = json.loads((data_dir / "synth.json").read_text())
    assert summary["target_val_images"] == 4
    assert not (data_dir / ".synth-running.json").exists()


def test_the_benchmark_pipeline_is_the_same_whichever_way_its_output_is_spelled(tmp_path, monkeypatch):
    """The stage cache keys hold the dataset roots: a relative and an absolute --output must give the
    same config, or every cached stage would be trained again."""
    from crossregion.app.demo import demo_pipeline_config

    monkeypatch.chdir(tmp_path)
    relative = demo_pipeline_config(Path("runs/bench/data"))
    absolute = demo_pipeline_config(tmp_path / "runs" / "bench" / "data")
    assert relative == absolute
    assert Path(relative.dataset_roots["cityscapes"]).is_absolute()
