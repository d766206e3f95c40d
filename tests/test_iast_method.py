"""IAST on the method API (methods/iast.py): the warm-up and the online self-training round.

One step of each on random batches (phase discipline, frozen teacher, selector moves once), the
config's checks, and tiny command-line runs on the synthetic benchmark: warm-up from a source
model, a round from the warm-up, pseudo labels and CRA from the round, and ``--resume`` of a
round restoring the selector's thresholds exactly.
"""

from __future__ import annotations

import shutil

import faults
import pytest
import torch
import torch.nn.functional as F
from test_cda_methods import NUM_CLASSES, RecordingContext, _batches, _weights, build_segmenter

from crossregion.cli import main
from crossregion.config.schema import DataConfig, DatasetSpec, ExperimentConfig, ModelConfig
from crossregion.engine.checkpoint import load_checkpoint
from crossregion.engine.trainer import set_train_modes
from crossregion.methods import METHODS
from crossregion.methods.adaptsegnet import domain_mse
from crossregion.methods.iast import IastConfig, IastWarmupConfig
from crossregion.methods.iast_selector import InstanceAdaptiveSelector, threshold_pseudo_labels
from crossregion.methods.losses import resize_aligned


def _step(method_cfg):
    torch.manual_seed(0)
    method = METHODS.get(method_cfg.name)(method_cfg, num_classes=NUM_CLASSES)
    models = method.build_models(build_segmenter())
    optimizers = method.build_optimizers(models, ExperimentConfig(method=method_cfg).optim)
    set_train_modes(models, optimizers, method.frozen_models())
    before = {name: _weights(model) for name, model in models.items()}
    ctx = RecordingContext(models, optimizers)
    batches = _batches()
    losses = method.training_step(models, batches, ctx)
    return method, models, optimizers, ctx, losses, before, batches


def test_warmup_step_is_adaptsegnet_single_level_with_least_squares() -> None:
    method, models, optimizers, ctx, losses, before, batches = _step(IastWarmupConfig())
    assert set(losses) == {"loss/seg_src", "loss/adv_tgt", "loss/disc_src", "loss/disc_tgt"}
    assert sorted(optimizers) == sorted(ctx.stepped) == ["discriminator_main", "segmenter"]
    assert ctx.disc_grads_at_generator_step == [] and ctx.segmenter_grads_at_disc_step == []
    after = _weights(models["segmenter"])
    assert all(torch.equal(after[k], v) for k, v in ctx.segmenter_after_generator_step.items())
    assert any(not torch.equal(before["segmenter"][k], after[k]) for k in after)
    # The D loss is least squares: recompute D's target term on the (now updated) D's input.
    disc = models["discriminator_main"]
    outputs = torch.randn(2, 1, 3, 4)
    assert method.domain_loss(outputs, 1.0) == domain_mse(outputs, 1.0) == ((outputs - 1) ** 2).mean()
    assert method.adversarial_weights() == {"main": 0.05}
    assert IastWarmupConfig().disc_domain_weight == 0.5
    assert disc is models["discriminator_main"]


def test_round_step_trains_the_student_only_from_the_teachers_selected_labels() -> None:
    method, models, optimizers, ctx, losses, before, batches = _step(IastConfig())
    assert set(losses) == {"loss/seg_tgt", "loss/kld_reg_tgt", "loss/entropy_reg_tgt", "stat/selected_share"}
    assert all(torch.isfinite(v) and not v.requires_grad for v in losses.values())
    # Only the student has an optimiser, and it stepped once.
    assert list(optimizers) == ["segmenter"] and ctx.stepped == ["segmenter"]
    teacher, student = models["teacher"], models["segmenter"]
    # The teacher: no gradient, unchanged (BatchNorm statistics included: it ran in eval mode).
    assert method.frozen_models() == ("teacher",)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before["teacher"][k], v) for k, v in _weights(teacher).items())
    assert any(not torch.equal(before["segmenter"][k], v) for k, v in _weights(student).items())
    # The selector moved once, with the teacher's softmax of this batch.
    assert method.selector.num_updates == 1
    reference = InstanceAdaptiveSelector(NUM_CLASSES)
    with torch.no_grad():
        image = batches["target"]["image"]
        probs = F.softmax(resize_aligned(teacher(image)["logits"], tuple(image.shape[-2:])), dim=1)
    expected_labels = reference.select(probs)
    assert torch.equal(method.selector.thresholds, reference.thresholds)
    assert torch.equal(threshold_pseudo_labels(probs, method.selector.thresholds), expected_labels)
    assert losses["stat/selected_share"] == (expected_labels != 255).float().mean()


def test_round_state_round_trips_and_rejects_foreign_state() -> None:
    method, *_ = _step(IastConfig())
    state = method.state_dict()
    fresh = METHODS.get("iast")(IastConfig(), num_classes=NUM_CLASSES)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.selector.thresholds, method.selector.thresholds)
    assert fresh.selector.num_updates == 1
    other = METHODS.get("iast")(IastConfig(proportion=0.25), num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="proportion"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="selector"):
        fresh.load_state_dict({})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("proportion", 0.0, "method.proportion"),
        ("proportion", 1.5, "method.proportion"),
        ("decay", -1.0, "method.decay"),
        ("momentum", 1.0, "method.momentum"),
        ("initial_threshold", 1.0, "method.initial_threshold"),
        ("cap", 0.0, "method.cap"),
        ("kld_weight", -0.1, "method.kld_weight"),
        ("entropy_weight", -3.0, "method.entropy_weight"),
    ],
)
def test_round_config_rejects_bad_values(field, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        IastConfig(**{field: value})


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="adv_main_weight"):
        IastWarmupConfig(adv_main_weight=-0.05)
    data = DataConfig(
        source=DatasetSpec(name="gta5", root="x"), target=DatasetSpec(name="cityscapes", root="y", labelled=False)
    )
    multi = ExperimentConfig(method=IastWarmupConfig(), data=data, model=ModelConfig(multi_level=True))
    with pytest.raises(ValueError, match="model.multi_level: false"):
        METHODS.get("iast_warmup")(multi.method, num_classes=19).check_config(multi)
    no_init = ExperimentConfig(method=IastConfig(), data=data, model=ModelConfig(multi_level=False))
    with pytest.raises(ValueError, match="model.init_checkpoint"):
        METHODS.get("iast")(no_init.method, num_classes=19).check_config(no_init)


# ------------------------------------------------------------------------ command line


def _overrides(benchmark, iterations: int, *, period: int | None = None, source: bool = False) -> list[str]:
    gta5, cityscapes = benchmark / "gta5", benchmark / "cityscapes"
    return [
        "model.backbone=resnet18",
        "data.batch_size=2",
        f"optim.max_iters={iterations}",
        f"optim.stop_iter={iterations}",
        "engine.eval_period=0",
        "engine.device=cpu",
        "engine.log_period=1",
        f"engine.checkpoint_period={period or iterations}",
        "engine.seed=3",
        "data.num_workers=0",
        "data.target.resize=[32, 64]",
        f"data.target.root={cityscapes}",
        "data.target_val.resize=[32, 64]",
        f"data.target_val.root={cityscapes}",
    ] + ([f"data.source.root={gta5}", "data.source.resize=[32, 64]"] if source else [])


@pytest.fixture(scope="module")
def warmup_checkpoint(tiny_benchmark, tiny_checkpoint, tmp_path_factory):
    run = tmp_path_factory.mktemp("iast") / "warmup"
    argv = [
        "train",
        "--config",
        "demo_iast_warmup",
        "--output",
        str(run),
        *_overrides(tiny_benchmark, 2, source=True),
        f"model.init_checkpoint={tiny_checkpoint}",
    ]
    assert main(argv) == 0
    return run / "final.pth"


def _round(benchmark, init, run, iterations=4, *extra):
    return main(
        [
            "train",
            "--config",
            "demo_iast",
            "--output",
            str(run),
            *extra,
            *_overrides(benchmark, iterations, period=2),
            f"model.init_checkpoint={init}",
        ]
    )


def test_warmup_cli_run(warmup_checkpoint, tiny_checkpoint) -> None:
    state = load_checkpoint(warmup_checkpoint)
    assert state["iteration"] == 2 and sorted(state["models"]) == ["discriminator_main", "segmenter"]
    assert state["config"]["method"]["name"] == "iast_warmup"
    source = load_checkpoint(tiny_checkpoint)["models"]["segmenter"]
    assert any(not torch.equal(source[k], v) for k, v in state["models"]["segmenter"].items())


def test_round_cli_then_pseudo_labels_and_cra(tiny_benchmark, warmup_checkpoint, tmp_path) -> None:
    run = tmp_path / "round"
    assert _round(tiny_benchmark, warmup_checkpoint, run) == 0
    state = load_checkpoint(run / "final.pth")
    assert sorted(state["models"]) == ["segmenter", "teacher"]
    assert list(state["optimizers"]) == ["segmenter"]
    # The teacher is the round's starting model, unchanged after 4 steps; the student moved.
    start = load_checkpoint(warmup_checkpoint)["models"]["segmenter"]
    teacher, student = state["models"]["teacher"], state["models"]["segmenter"]
    assert all(torch.equal(start[k], teacher[k]) for k in start)
    assert any(not torch.equal(start[k], student[k]) for k in start)
    # One selector update per step.
    selector = state["method_state"]["selector"]
    assert selector["num_updates"] == 4
    assert not torch.equal(selector["thresholds"], torch.full((19,), 0.9, dtype=torch.float64))

    store = tmp_path / "store"
    assert main(faults.pseudo_label_argv(tiny_benchmark, run / "final.pth", store)) == 0
    cra = tmp_path / "cra"
    cityscapes = tiny_benchmark / "cityscapes"
    assert (
        main(
            [
                "train",
                "--config",
                "demo_cra",
                "--output",
                str(cra),
                "model.backbone=resnet18",
                "data.batch_size=2",
                "optim.max_iters=2",
                "optim.stop_iter=2",
                "engine.eval_period=0",
                "engine.device=cpu",
                "data.num_workers=0",
                "data.target.crop=[32, 64]",
                f"data.target.root={cityscapes}",
                f"data.target_val.root={cityscapes}",
                f"model.init_checkpoint={run / 'final.pth'}",
                f"method.pseudo_label_store={store}",
            ]
        )
        == 0
    )
    assert load_checkpoint(cra / "final.pth")["iteration"] == 2


def test_round_resume_restores_the_selector_exactly(tiny_benchmark, warmup_checkpoint, tmp_path) -> None:
    reference = tmp_path / "reference"
    assert _round(tiny_benchmark, warmup_checkpoint, reference) == 0
    # The same run interrupted after its iteration-2 checkpoint, then resumed.
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    (resumed / "final.pth").unlink()
    (resumed / "last.pth").unlink()
    shutil.copyfile(resumed / "model_iter000002.pth", resumed / "last.pth")
    (resumed / "model_iter000004.pth").unlink()
    assert load_checkpoint(resumed / "last.pth")["method_state"]["selector"]["num_updates"] == 2
    assert _round(tiny_benchmark, warmup_checkpoint, resumed, 4, "--resume") == 0

    expected, actual = load_checkpoint(reference / "final.pth"), load_checkpoint(resumed / "final.pth")
    assert actual["method_state"]["selector"]["num_updates"] == 4
    assert torch.equal(
        expected["method_state"]["selector"]["thresholds"], actual["method_state"]["selector"]["thresholds"]
    )
    for key, value in expected["models"]["segmenter"].items():
        assert torch.equal(value, actual["models"]["segmenter"][key]), key


def test_presets_are_listed(capsys) -> None:
    assert main(["dump-config", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    for preset in ("demo_iast_warmup", "demo_iast", "gta5_iast_warmup", "gta5_iast"):
        assert preset in listed
