"""ProDA stage 1 as a method: one step's phase discipline, the CLI chain (warm-up -> ProDA ->
pseudo labels -> CRA), EMA/prototype updates once per step, exact resume, official .pkl start."""

from __future__ import annotations

import shutil

import faults
import pytest
import torch
from proda_fixtures import deterministic_state, load_reference

from crossregion.cli import main
from crossregion.config.schema import DataConfig, DatasetSpec, ExperimentConfig, ModelConfig
from crossregion.engine.amp import build_grad_scaler
from crossregion.engine.checkpoint import load_checkpoint
from crossregion.engine.trainer import StepContext, set_train_modes
from crossregion.methods import UNAUGMENTED_TARGET
from crossregion.methods import proda as proda_module
from crossregion.methods.proda import Proda, ProdaConfig
from crossregion.methods.proda_prototypes import Prototypes
from crossregion.models import build_segmenter

NUM_CLASSES = 4
CPU = torch.device("cpu")


def _tiny_models(cfg: ProdaConfig):
    torch.manual_seed(0)
    method = Proda(cfg, num_classes=NUM_CLASSES)
    models = method.build_models(build_segmenter("resnet18", NUM_CLASSES, head="proda"))
    optimizers = method.build_optimizers(models, ExperimentConfig(method=cfg).optim)
    generator = torch.Generator().manual_seed(1)
    target = [{"image": torch.randn(3, 32, 64, generator=generator)} for _ in range(2)]
    method.on_train_start(models, {UNAUGMENTED_TARGET: target})
    set_train_modes(models, optimizers, method.frozen_models())
    mask = torch.randint(0, NUM_CLASSES, (2, 32, 64), generator=generator)
    batches = {
        "source": {"image": torch.randn(2, 3, 32, 64, generator=generator), "mask": mask},
        "target": {"image": torch.randn(2, 3, 32, 64, generator=generator)},
    }
    return method, models, optimizers, batches


def _clone(module):
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


@pytest.mark.parametrize("ema_mode", ["train", "eval"])
def test_one_step_trains_only_the_student_then_updates_ema_and_prototypes_once(ema_mode):
    cfg = ProdaConfig(proto_momentum=0.5, ema_decay=0.9, prototype_epochs=1, ema_mode=ema_mode)
    method, models, optimizers, batches = _tiny_models(cfg)
    assert sorted(optimizers) == ["segmenter"]  # the EMA teacher and warm-up model get none
    # The warm-up model runs in eval mode, the EMA teacher in its configured mode.
    assert not models["warmup"].training and models["ema"].training == (ema_mode == "train")
    before = {name: _clone(model) for name, model in models.items()}
    ctx = StepContext(iteration=0, device=CPU, optimizers=optimizers, scaler=build_grad_scaler(CPU, "none"))
    losses = method.training_step(models, batches, ctx)
    assert ctx.stepped == ["segmenter"]
    assert set(losses) == {"loss/seg_src", "loss/pseudo_tgt", "loss/reg_tgt", "loss/consist_tgt"}
    assert all(torch.isfinite(v) and not v.requires_grad for v in losses.values())
    for name in ("ema", "warmup"):
        assert all(p.grad is None and not p.requires_grad for p in models[name].parameters()), name
        after = _clone(models[name])
        moved = [k for k in after if not torch.equal(after[k], before[name][k])]
        if name == "ema" and ema_mode == "train":
            # The official EMA teacher runs in train mode: BatchNorm on batch statistics, which
            # also moves its running statistics (after_step overwrites them with the student's).
            assert moved and all("running" in k or "num_batches_tracked" in k for k in moved)
        else:
            # Eval mode: not even the BN statistics move.
            assert not moved, name
    student = _clone(models["segmenter"])
    changed = [k for k in student if not torch.equal(student[k], before["segmenter"][k])]
    assert any(k.startswith("feature_extractor.") for k in changed)
    assert any(k.startswith("classifier.") for k in changed)

    features, logits = method._cached
    expected = Prototypes(NUM_CLASSES)
    expected.load_state_dict(method.prototypes.state_dict())
    expected.update_moving_average(features, logits, momentum=0.5)
    method.after_step(models, batches)
    assert torch.equal(method.prototypes.vectors, expected.vectors)
    ema = dict(models["ema"].named_parameters())
    for key, param in models["segmenter"].named_parameters():
        assert torch.allclose(ema[key], 0.9 * before["ema"][key] + 0.1 * param.detach()), key
    for key, buffer in models["segmenter"].named_buffers():
        assert torch.equal(dict(models["ema"].named_buffers())[key], buffer), key
    with pytest.raises(RuntimeError, match="without a training_step"):
        method.after_step(models, batches)  # a second update for the same step is refused
    assert method.state_dict()["prototypes"]["vectors"].shape == (NUM_CLASSES, 256)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("consistency_weight", -1.0, "method.consistency_weight"),
        ("regular_type", "kl", "method.regular_type"),
        ("ema_decay", 1.5, "method.ema_decay"),
        ("label_downsample", 0, "method.label_downsample"),
        ("proto_temperature", 0.0, "method.proto_temperature"),
        ("ema_mode", "frozen", "method.ema_mode must be one of"),
    ],
)
def test_bad_config_values_are_clear_errors(key, value, message):
    with pytest.raises(ValueError, match=message):
        ProdaConfig(**{key: value})


def test_bad_config_from_the_command_line(tmp_path, tiny_benchmark, capsys):
    assert main(["train", "--config", "demo_proda", "--output", str(tmp_path / "run"), "method.ema_decay=2"]) != 0
    assert "method.ema_decay must be in [0, 1], got 2.0" in capsys.readouterr().err


def test_proda_needs_the_proda_head():
    cfg = ExperimentConfig(
        method=ProdaConfig(),
        data=DataConfig(
            source=DatasetSpec(name="gta5", root="x"), target=DatasetSpec(name="cityscapes", root="y", labelled=False)
        ),
        model=ModelConfig(head="aspp"),
    )
    with pytest.raises(ValueError, match="model.head: proda"):
        Proda(cfg.method, num_classes=19).check_config(cfg)


def _data(benchmark) -> list[str]:
    return [
        *faults.tiny_training(benchmark),
        "data.target.resize=[32, 64]",
        f"data.target.root={benchmark / 'cityscapes'}",
    ]


@pytest.fixture(scope="module")
def warmup_checkpoint(tiny_benchmark, tiny_checkpoint, tmp_path_factory):
    run = tmp_path_factory.mktemp("proda") / "warmup"
    assert (
        main(
            [
                "train",
                "--config",
                "demo_proda_warmup",
                "--output",
                str(run),
                *_data(tiny_benchmark),
                f"model.init_checkpoint={tiny_checkpoint}",
            ]
        )
        == 0
    )
    return run / "final.pth"


def _proda_args(benchmark, warmup, run, iterations=4):
    return [
        "train",
        "--config",
        "demo_proda",
        "--output",
        str(run),
        *_data(benchmark),
        f"model.init_checkpoint={warmup}",
        f"optim.max_iters={iterations}",
        f"optim.stop_iter={iterations}",
        "engine.checkpoint_period=2",
        "engine.keep_last=5",
        "method.proto_momentum=0.5",
    ]


@pytest.fixture(scope="module")
def proda_run(tiny_benchmark, warmup_checkpoint, tmp_path_factory):
    run = tmp_path_factory.mktemp("proda") / "stage1"
    calls = {"ema": 0, "prototypes": 0}
    original_ema, original_update = proda_module.update_ema_model, Prototypes.update_moving_average

    def count_ema(*args, **kwargs):
        calls["ema"] += 1
        return original_ema(*args, **kwargs)

    def count_prototypes(self, *args, **kwargs):
        calls["prototypes"] += 1
        return original_update(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(proda_module, "update_ema_model", count_ema)
        patch.setattr(Prototypes, "update_moving_average", count_prototypes)
        assert main(_proda_args(tiny_benchmark, warmup_checkpoint, run)) == 0
    return run, calls


def test_warmup_starts_from_the_source_backbone_only(warmup_checkpoint, tiny_checkpoint):
    warm = load_checkpoint(warmup_checkpoint)
    assert warm["model"]["head"] == "proda"
    assert "classifier.head.1.weight" in warm["models"]["segmenter"]


def test_chain_trains_and_updates_once_per_step(proda_run, warmup_checkpoint):
    run, calls = proda_run
    assert calls == {"ema": 4, "prototypes": 4}
    final = load_checkpoint(run / "final.pth")
    assert sorted(final["models"]) == ["ema", "segmenter", "warmup"]
    assert sorted(final["optimizers"]) == ["segmenter"]
    warm = load_checkpoint(warmup_checkpoint)["models"]["segmenter"]
    # The warm-up model stays frozen at the warm-up checkpoint's weights.
    assert all(torch.equal(final["models"]["warmup"][k], warm[k]) for k in warm)
    vectors = final["method_state"]["prototypes"]["vectors"]
    assert vectors.shape == (19, 256) and torch.isfinite(vectors).all() and vectors.abs().sum() > 0


def test_resume_restores_the_prototypes_exactly(proda_run, tiny_benchmark, warmup_checkpoint, tmp_path):
    run, _ = proda_run
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    # Back to the iteration-2 checkpoint, as if killed after it.
    for path in resumed.glob("*.pth"):
        path.unlink()
    shutil.copy(run / "model_iter000002.pth", resumed / "model_iter000002.pth")
    (resumed / "last.pth").symlink_to("model_iter000002.pth")
    assert main([*_proda_args(tiny_benchmark, warmup_checkpoint, resumed), "--resume"]) == 0
    expected, actual = load_checkpoint(run / "final.pth"), load_checkpoint(resumed / "final.pth")
    for key in ("vectors", "counts"):
        assert torch.equal(expected["method_state"]["prototypes"][key], actual["method_state"]["prototypes"][key])
    for name in ("segmenter", "ema"):
        for key, value in expected["models"][name].items():
            assert torch.equal(value, actual["models"][name][key]), f"{name}.{key}"


def test_pseudo_labels_and_cra_from_the_proda_checkpoint(proda_run, tiny_benchmark, tmp_path):
    run, _ = proda_run
    store = tmp_path / "store"
    assert main(faults.pseudo_label_argv(tiny_benchmark, run / "final.pth", store)) == 0
    cra = tmp_path / "cra"
    assert (
        main(
            [
                "train",
                "--config",
                "demo_cra",
                "--output",
                str(cra),
                *faults.tiny_training(tiny_benchmark, batch="target"),
                "model.head=proda",
                "model.input_norm=unit",
                f"model.init_checkpoint={run / 'final.pth'}",
                f"method.pseudo_label_store={store}",
            ]
        )
        == 0
    )
    assert load_checkpoint(cra / "final.pth")["model"]["head"] == "proda"


def test_official_proda_pkl_starts_a_cra_run(tiny_benchmark, tiny_store, tmp_path):
    state = deterministic_state(load_reference()["keys_and_shapes"])
    path = tmp_path / "proda_stage1.pkl"
    torch.save(
        {"ResNet101": {"model_state": state, "objective_vectors": torch.zeros(19, 256)}, "iter": 7, "best_iou": 0.5},
        path,
    )
    cra = tmp_path / "cra"
    assert (
        main(
            [
                "train",
                "--config",
                "demo_cra",
                "--output",
                str(cra),
                *faults.tiny_training(tiny_benchmark, batch="target", iterations=1),
                "model.backbone=resnet101_deeplab",
                "model.head=proda",
                "model.input_norm=unit",
                f"model.init_checkpoint={path}",
                f"method.pseudo_label_store={tiny_store}",
            ]
        )
        == 0
    )
    final = load_checkpoint(cra / "final.pth")
    assert final["model"]["backbone"] == "resnet101_deeplab" and final["model"]["head"] == "proda"


def test_proda_warmup_is_the_least_squares_step_with_prodas_discriminator():
    from crossregion.methods.adaptsegnet import domain_mse
    from crossregion.methods.proda_warmup import ProdaWarmup, ProdaWarmupConfig
    from crossregion.models import ProdaDiscriminator

    method = ProdaWarmup(ProdaWarmupConfig(), num_classes=NUM_CLASSES)
    models = method.build_models(build_segmenter("resnet18", NUM_CLASSES, head="proda"))
    discriminator = models["discriminator_main"]
    assert sorted(models) == ["discriminator_main", "segmenter"] and isinstance(discriminator, ProdaDiscriminator)
    # Four stride-2 3x3 convs then a 1x1: a 32x64 map gives 2x4 scores.
    assert discriminator(torch.rand(1, NUM_CLASSES, 32, 64)).shape == (1, 1, 2, 4)
    assert (method.cfg.adv_main_weight, method.cfg.disc_domain_weight) == (0.01, 1.0)
    scores = torch.randn(2, 1, 3, 5)
    assert method.domain_loss(scores, 1.0) == domain_mse(scores, 1.0) == ((scores - 1) ** 2).mean()
    generator = torch.Generator().manual_seed(0)
    mask = torch.randint(0, NUM_CLASSES, (2, 32, 64), generator=generator)
    batches = {
        "source": {"image": torch.randn(2, 3, 32, 64, generator=generator), "mask": mask},
        "target": {"image": torch.randn(2, 3, 32, 64, generator=generator)},
    }
    optimizers = method.build_optimizers(models, ExperimentConfig(method=method.cfg).optim)
    ctx = StepContext(iteration=0, device=CPU, optimizers=optimizers, scaler=build_grad_scaler(CPU, "none"))
    losses = method.training_step(models, batches, ctx)
    assert ctx.stepped == ["segmenter", "discriminator_main"]
    assert {"loss/seg_src", "loss/adv_tgt", "loss/disc_src", "loss/disc_tgt"} <= set(losses)


def test_iast_discriminator_has_a_3x3_first_conv():
    from crossregion.methods.iast import IastWarmup, IastWarmupConfig

    models = IastWarmup(IastWarmupConfig(), num_classes=NUM_CLASSES).build_models(
        build_segmenter("resnet18", NUM_CLASSES)
    )
    assert models["discriminator_main"].conv1.kernel_size == (3, 3)
    assert models["discriminator_main"].conv2.kernel_size == (4, 4)
