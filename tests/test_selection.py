"""Label-free model selection: each criterion on a case with a known answer, ``crossregion select``
end to end on tiny checkpoints, and the pipeline's ``select:`` option."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import faults

from crossregion.app.pipeline.config import load_pipeline_config
from crossregion.app.pipeline.run import run_pipeline
from crossregion.cli import main as cli_main
from crossregion.eval.selection import (
    CRITERIA,
    deep_embedded_validation,
    gather_target,
    information_maximization,
    mean_normalized_entropy,
    sample_at,
    soft_neighborhood_density,
    trusted_fraction,
    view_agreement,
)

NUM_CLASSES = 19


def _confident(classes: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    probs = torch.full((len(classes), num_classes), 1e-4)
    probs[torch.arange(len(classes)), classes] = 1.0
    return probs / probs.sum(dim=1, keepdim=True)


def _better(name: str, a: float, b: float) -> bool:
    return a > b if CRITERIA[name].higher_is_better else a < b


# ----- criteria on constructed cases -------------------------------------------------------------
def test_entropy_prefers_a_confident_model_to_a_uniform_one():
    classes = torch.arange(1000) % NUM_CLASSES
    confident, uniform = _confident(classes), torch.full((1000, NUM_CLASSES), 1 / NUM_CLASSES)
    assert mean_normalized_entropy(uniform) == pytest.approx(1.0)
    assert mean_normalized_entropy(confident) < 0.01
    assert _better("entropy", mean_normalized_entropy(confident), mean_normalized_entropy(uniform))


def test_information_maximization_wants_confident_and_diverse_predictions():
    spread = _confident(torch.arange(1900) % NUM_CLASSES)  # every class equally often
    collapsed = _confident(torch.zeros(1900, dtype=torch.long))  # one class everywhere
    uniform = torch.full((1900, NUM_CLASSES), 1 / NUM_CLASSES)
    assert information_maximization(spread) > 0.98
    assert information_maximization(collapsed) == pytest.approx(0.0, abs=0.01)
    assert information_maximization(uniform) == pytest.approx(0.0, abs=1e-6)


def test_soft_neighborhood_density_is_higher_on_clustered_than_on_scattered_features():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    clustered = centres.repeat_interleave(50, dim=0) + 0.01 * torch.randn(200, 2, generator=generator)
    angles = torch.rand(200, generator=generator) * 2 * math.pi
    scattered = torch.stack([angles.cos(), angles.sin()], dim=1)
    # Four tight clusters of 50: each sample spreads its similarity over its 49 cluster mates.
    assert soft_neighborhood_density(clustered) == pytest.approx(math.log(49), abs=0.01)
    assert _better("snd", soft_neighborhood_density(clustered), soft_neighborhood_density(scattered))


def test_trusted_fraction_trusts_a_confident_model_and_not_a_uniform_one():
    classes = torch.arange(1000) % NUM_CLASSES
    assert trusted_fraction(_confident(classes), 0.01, 0.01, 0.5) == 1.0
    assert trusted_fraction(torch.full((1000, NUM_CLASSES), 1 / NUM_CLASSES), 0.01, 0.01, 0.5) == 0.0


def test_trusted_fraction_doubles_lambda_for_the_classes_this_model_rarely_predicts():
    # Entropy between λ and 2λ: trusted only where the predicted class is rare (factor 0.5).
    probs = torch.tensor([[0.9] + [0.1 / 18] * 18])
    entropy = float(-(probs * probs.log()).sum() / (NUM_CLASSES * math.log(NUM_CLASSES)))
    threshold = entropy * 0.75
    common, rare = probs.repeat(999, 1), probs[:, torch.roll(torch.arange(NUM_CLASSES), 1)]
    # 999 pixels of class 0 and one of class 1: class 1 is rare, its one pixel trusted.
    assert trusted_fraction(torch.cat([common, rare]), threshold, 0.01, 0.5) == pytest.approx(1 / 1000)


def test_deep_embedded_validation_is_the_source_risk_when_domains_cannot_be_told_apart():
    generator = torch.Generator().manual_seed(0)
    source, target = torch.randn(600, 8, generator=generator), torch.randn(600, 8, generator=generator)
    losses = torch.rand(600, generator=generator)
    assert deep_embedded_validation(source, losses, target) == pytest.approx(float(losses.mean()), abs=0.05)


def test_deep_embedded_validation_weights_the_source_pixels_that_look_like_the_target():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(400, 8, generator=generator)
    target_like = torch.randn(200, 8, generator=generator)
    far = torch.randn(200, 8, generator=generator) + torch.tensor([6.0] + [0.0] * 7)
    source = torch.cat([target_like, far])
    # Same mean source loss (0.5); one model errs where the source looks like the target.
    right_where_it_matters = torch.cat([torch.zeros(200), torch.ones(200)])
    wrong_where_it_matters = 1 - right_where_it_matters
    good = deep_embedded_validation(source, right_where_it_matters, target)
    bad = deep_embedded_validation(source, wrong_where_it_matters, target)
    assert good < 0.1 and bad > 0.9
    assert _better("dev", good, bad)


def test_sample_at_reads_the_upsampled_map():
    maps = torch.randn(1, 5, 4, 6)
    ys, xs = torch.tensor([0, 3, 10, 11]), torch.tensor([0, 7, 15, 2])
    full = F.interpolate(maps, size=(12, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(sample_at(maps, ys, xs, (12, 16)), full[0, :, ys, xs].T)


class _ColourModel(nn.Module):
    """The class of an image is its mean colour's: the same in every view of it."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = images.mean(dim=(2, 3), keepdim=True).expand(-1, -1, *images.shape[-2:])
        return {"features": logits, "logits": logits}


class _LeftRightModel(nn.Module):
    """Class 0 on the left half of the input, class 1 on the right: a flip swaps them."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        width = images.shape[-1]
        ramp = torch.linspace(-1, 1, width).expand(*images.shape[-2:])
        logits = torch.stack([-ramp, ramp, torch.zeros_like(ramp)])[None].expand(len(images), -1, -1, -1)
        return {"features": logits, "logits": logits}


def test_agreement_is_one_for_a_flip_and_scale_invariant_model_and_low_for_one_that_is_not():
    # Noisy images, each with one clearly dominant colour channel (its class for _ColourModel).
    generator = torch.Generator().manual_seed(0)
    images = [
        {
            "image": torch.randn(1, 3, 16, 32, generator=generator)
            + 3 * F.one_hot(torch.tensor(i), 3)[None, :, None, None],
            "original_size": torch.tensor([[16, 32]]),
            "index": [i],
        }
        for i in range(3)
    ]

    def agreement(model: nn.Module) -> float:
        pixels = gather_target(
            model, images, device=torch.device("cpu"), pixels_per_image=200, seed=0, views=True, features=False
        )
        return view_agreement(pixels.probs.argmax(dim=1), pixels.view_predictions)

    assert agreement(_ColourModel()) == 1.0
    # The flip disagrees almost everywhere, the two rescalings almost nowhere: about 2/3.
    assert agreement(_LeftRightModel()) == pytest.approx(2 / 3, abs=0.05)
    assert _better("agreement", agreement(_ColourModel()), agreement(_LeftRightModel()))


# ----- crossregion select end to end --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tiny_benchmark, tmp_path_factory) -> Path:
    """A source-only run that keeps both of its two checkpoints."""
    run = tmp_path_factory.mktemp("select_run") / "run"
    argv = [
        "train",
        "--config",
        "demo_source_only",
        "--output",
        str(run),
        *faults.tiny_training(tiny_benchmark),
        "engine.checkpoint_period=1",
        "engine.keep_last=3",
    ]
    assert cli_main(argv) == 0
    return run


def _select(benchmark: Path, output: Path, *candidates: Path | str, extra: tuple[str, ...] = ()) -> int:
    return cli_main(
        [
            "select",
            *map(str, candidates),
            "--dataset",
            "cityscapes",
            "--root",
            str(benchmark / "cityscapes"),
            "--output",
            str(output),
            "--images",
            "3",
            "--pixels",
            "64",
            "--device",
            "cpu",
            "--workers",
            "0",
            *extra,
        ]
    )


def test_select_ranks_every_checkpoint_of_a_run_by_every_criterion(
    tiny_benchmark, tiny_run, tiny_store, tmp_path, capsys
):
    source = ("--source-dataset", "gta5", "--source-root", str(tiny_benchmark / "gta5"), "--source-images", "2")
    output = tmp_path / "selection.json"
    assert _select(tiny_benchmark, output, tiny_run, extra=(*source, "--store", str(tiny_store))) == 0
    printed = capsys.readouterr().out
    report = json.loads(output.read_text())
    paths = [str(tiny_run / "model_iter000001.pth"), str(tiny_run / "model_iter000002.pth")]
    assert [row["path"] for row in report["candidates"]] == paths
    assert [row["iteration"] for row in report["candidates"]] == [1, 2]
    assert list(report["criteria"]) == list(CRITERIA)
    assert report["settings"]["target"]["images"] == 3 and report["settings"]["source"]["images"] == 2
    assert report["settings"]["trust_rule"]["threshold"] == 0.01
    for name, criterion in CRITERIA.items():
        scores = {row["path"]: row["scores"][name] for row in report["candidates"]}
        assert sorted(report["rankings"][name]) == sorted(paths)
        ordered = [scores[path] for path in report["rankings"][name]]
        assert ordered == sorted(ordered, reverse=criterion.higher_is_better)
        assert all(row["seconds"][name] > 0 for row in report["candidates"])
        assert f"{name}: {criterion.title}" in printed
    assert sum(line.startswith("| 1 | ") for line in printed.splitlines()) == len(CRITERIA)
    # The same pixels every time: a second run gives the same scores.
    again = tmp_path / "again.json"
    assert _select(tiny_benchmark, again, tiny_run / "model_iter000002.pth", extra=("--criteria", "entropy")) == 0
    rescored = json.loads(again.read_text())["candidates"][0]["scores"]["entropy"]
    assert rescored == report["candidates"][1]["scores"]["entropy"]


def test_select_takes_the_checkpoints_of_every_stage_of_a_pipeline_folder(tiny_benchmark, tiny_run, tmp_path):
    pipeline = tmp_path / "pipeline"
    (pipeline / "empty_stage").mkdir(parents=True)
    (pipeline / "00_source").symlink_to(tiny_run)
    (pipeline / "00_source.previous").symlink_to(tiny_run)
    output = tmp_path / "selection.json"
    assert _select(tiny_benchmark, output, pipeline, extra=("--criteria", "entropy", "trusted")) == 0
    paths = [row["path"] for row in json.loads(output.read_text())["candidates"]]
    assert paths == [str(pipeline / "00_source" / f"model_iter00000{i}.pth") for i in (1, 2)]


def _foreign_checkpoint(path: Path, num_classes: int) -> Path:
    from crossregion.models import build_segmenter

    segmenter = build_segmenter("resnet18", num_classes)
    model = {"backbone": "resnet18", "num_classes": num_classes}
    torch.save(
        {
            "format": "crossregion",
            "format_version": 1,
            "iteration": 0,
            "model": model,
            "models": {"segmenter": segmenter.state_dict()},
        },
        path,
    )
    return path


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing", "does not exist"),
        ("empty folder", "holds no checkpoint"),
        ("another model", "predicts 16 classes but"),
        ("not a checkpoint", "not a segmenter checkpoint"),
        ("dev without source", "needs labelled source images"),
    ],
)
def test_select_fails_clearly_on_bad_candidates(tiny_benchmark, tiny_run, tmp_path, capsys, problem, message):
    good = tiny_run / "model_iter000002.pth"
    extra: tuple[str, ...] = ()
    if problem == "missing":
        candidates = [good, tmp_path / "nope.pth"]
    elif problem == "empty folder":
        (tmp_path / "empty").mkdir()
        candidates = [tmp_path / "empty"]
    elif problem == "another model":
        candidates = [good, _foreign_checkpoint(tmp_path / "synthia.pth", 16)]
    elif problem == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
        candidates = [good, tmp_path / "other.pth"]
    else:
        candidates, extra = [good], ("--criteria", "dev")
    output = tmp_path / "selection.json"
    assert _select(tiny_benchmark, output, *candidates, extra=extra) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not output.exists()


# ----- the pipeline's select: option --------------------------------------------------------------
def _pipeline_config(tmp_path: Path, benchmark: Path) -> Path:
    stage = {
        "preset": "demo_source_only",
        "overrides": ["model.init_checkpoint=$cda_checkpoint", "engine.checkpoint_period=1", "engine.keep_last=3"],
    }
    config = {
        "target": {"name": "cityscapes", "root": str(benchmark / "cityscapes")},
        "dataset_roots": {"gta5": str(benchmark / "gta5"), "cityscapes": str(benchmark / "cityscapes")},
        "common_overrides": faults.tiny_training(benchmark),
        "source": "demo_source_only",
        "cda": {"so": {"preset": "demo_source_only", "overrides": ["model.init_checkpoint=$source_checkpoint"]}},
        "cda_methods": ["so"],
        "cra": stage,
        "baselines": {"pseudo_label_only": stage},
        "device": "cpu",
        "panel_images": 0,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_pipeline_select_picks_the_checkpoint_the_criterion_ranks_first(tiny_benchmark, tmp_path):
    config = _pipeline_config(tmp_path, tiny_benchmark)
    output = tmp_path / "run"
    final = run_pipeline(load_pipeline_config(str(config)), output)
    assert not any(name.endswith("_select") for name in final["stages"])

    selected = run_pipeline(load_pipeline_config(str(config), ["select=entropy"]), output)
    new = {name for name, stage in selected["stages"].items() if not stage["skipped"]}
    # The training stages are kept; only the selection stages (and what reads CRA) run.
    assert new == {"03_cra_so_select", "03_pseudo_label_only_so_select", "03_cra_so_analysis"}
    for stage, key in (("03_cra_so", "cra"), ("03_pseudo_label_only_so", "pseudo_label_only")):
        marker = json.loads((output / f"{stage}_select" / "stage.json").read_text())["outputs"]
        report = json.loads((output / f"{stage}_select" / "selection.json").read_text())
        scores = {row["path"]: row["scores"]["entropy"] for row in report["candidates"]}
        assert sorted(Path(path).name for path in scores) == ["model_iter000001.pth", "model_iter000002.pth"]
        # Lowest entropy wins.
        assert marker["checkpoint"] == min(scores, key=scores.get)
        assert marker["final_miou"] == final["methods"]["so"][key]
        assert selected["methods"]["so"][key] == marker["miou"]


@pytest.mark.parametrize(("value", "message"), [("dev", "needs labelled source images"), ("best", "choose final")])
def test_pipeline_select_names_what_it_accepts(tiny_benchmark, tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        load_pipeline_config(str(_pipeline_config(tmp_path, tiny_benchmark)), [f"select={value}"])
