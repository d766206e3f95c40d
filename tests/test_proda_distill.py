"""ProDA stages 2/3 (method proda_distill): one step trains only the student, the thresholded
flip-averaged labels match the official formula, the CLI chain runs, bad configs are clear."""

from __future__ import annotations

import faults
import pytest
import torch
import torch.nn.functional as F

from crossregion.cli import main
from crossregion.config.schema import ExperimentConfig
from crossregion.engine.amp import build_grad_scaler
from crossregion.engine.checkpoint import load_checkpoint
from crossregion.engine.trainer import StepContext, set_train_modes
from crossregion.methods.proda_distill import (
    ProdaDistill,
    ProdaDistillConfig,
    distillation_term,
    flip_averaged_pseudo_labels,
)
from crossregion.models import build_segmenter

NUM_CLASSES = 4
CPU = torch.device("cpu")


def _clone(module):
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _teacher_file(tmp_path, segmenter):
    path = tmp_path / "teacher.pth"
    model = {"backbone": "resnet18", "num_classes": NUM_CLASSES, "head": "proda"}
    torch.save({"format": "crossregion", "model": model, "models": {"segmenter": segmenter.state_dict()}}, path)
    return path


def test_official_pseudo_label_formula():
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(2, 3, 5, 6, generator=generator)
    flipped_logits = 4 * torch.randn(2, 3, 5, 6, generator=generator)
    probs, flipped = logits.softmax(1), flipped_logits.softmax(1)
    labels, confidence = flip_averaged_pseudo_labels(probs, flipped, threshold=0.95)
    # Literal transcription of generate_pseudo_label.py --flip and the loader's threshold:
    # out = (out + fliplr(flip_out)) / 2; confidence, pseudo = out.max(1); lp[conf <= thr] = ignore.
    out = (probs + torch.flip(flipped, [3])) / 2
    conf, pseudo = out.max(1)
    pseudo[conf <= 0.95] = 255
    assert torch.equal(labels, pseudo) and torch.equal(confidence, conf)
    assert (labels == 255).any() and (labels != 255).any()
    # Exactly at the threshold is ignored (official `<=`).
    edge = torch.tensor([[0.95, 0.05]]).view(1, 2, 1, 1)
    assert flip_averaged_pseudo_labels(edge, None, threshold=0.95)[0].item() == 255


def test_distillation_term_forms():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
    p_t = teacher.softmax(1)
    official = (p_t * (p_t.log() - student.softmax(1))).mean()
    true_kl = (p_t * (p_t.log() - student.log_softmax(1))).mean()
    assert torch.allclose(distillation_term(student, p_t, "official"), official, atol=1e-6)
    assert torch.allclose(distillation_term(student, p_t, "true_kl"), true_kl, atol=1e-6)
    assert torch.allclose(true_kl * 3, F.kl_div(student.log_softmax(1), p_t, reduction="sum") / 32, atol=1e-6)


def test_one_step_trains_only_the_student(tmp_path):
    torch.manual_seed(0)
    teacher_file = _teacher_file(tmp_path, build_segmenter("resnet18", NUM_CLASSES, head="proda"))
    cfg = ProdaDistillConfig(teacher_checkpoint=str(teacher_file), pseudo_threshold=0.0)
    method = ProdaDistill(cfg, num_classes=NUM_CLASSES, backbone="resnet18", head="proda")
    models = method.build_models(build_segmenter("resnet18", NUM_CLASSES, head="proda"))
    assert sorted(models) == ["segmenter", "teacher"]
    expected_teacher = torch.load(teacher_file, weights_only=True)["models"]["segmenter"]
    assert all(torch.equal(models["teacher"].state_dict()[k], v) for k, v in expected_teacher.items())
    optimizers = method.build_optimizers(models, ExperimentConfig(method=cfg).optim)
    assert sorted(optimizers) == ["segmenter"]
    set_train_modes(models, optimizers, method.frozen_models())
    assert models["segmenter"].training and not models["teacher"].training
    generator = torch.Generator().manual_seed(1)
    batches = {
        "source": {
            "image": torch.randn(2, 3, 32, 64, generator=generator),
            "mask": torch.randint(0, NUM_CLASSES, (2, 32, 64), generator=generator),
        },
        "target": {"image": torch.randn(2, 3, 32, 64, generator=generator)},
    }
    before = {name: _clone(model) for name, model in models.items()}
    ctx = StepContext(iteration=0, device=CPU, optimizers=optimizers, scaler=build_grad_scaler(CPU, "none"))
    losses = method.training_step(models, batches, ctx)
    assert ctx.stepped == ["segmenter"]
    assert set(losses) == {"loss/seg_src", "loss/pseudo_tgt", "loss/distill_tgt"}
    assert all(torch.isfinite(v) and not v.requires_grad for v in losses.values())
    assert losses["loss/pseudo_tgt"] > 0  # threshold 0: every pixel outside the cutout is labelled
    assert all(p.grad is None and not p.requires_grad for p in models["teacher"].parameters())
    after = _clone(models["teacher"])
    assert all(torch.equal(after[k], before["teacher"][k]) for k in after)  # buffers too (eval mode)
    student = _clone(models["segmenter"])
    changed = [k for k in student if not torch.equal(student[k], before["segmenter"][k])]
    assert any(k.startswith("feature_extractor.") for k in changed)
    assert any(k.startswith("classifier.") for k in changed)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("teacher_checkpoint", None, "method.teacher_checkpoint is required"),
        ("kl_form", "kl", "method.kl_form"),
        ("pseudo_threshold", 1.5, "method.pseudo_threshold"),
        ("distill_weight", -1.0, "method.distill_weight"),
        ("label_downsample", 0, "method.label_downsample"),
    ],
)
def test_bad_config_values_are_clear_errors(key, value, message):
    with pytest.raises(ValueError, match=message):
        ProdaDistillConfig(**{"teacher_checkpoint": "t.pth", key: value})


def test_missing_teacher_file_names_the_field(tmp_path):
    cfg = ProdaDistillConfig(teacher_checkpoint=str(tmp_path / "absent.pth"))
    method = ProdaDistill(cfg, num_classes=NUM_CLASSES, backbone="resnet18", head="proda")
    with pytest.raises(ValueError, match="method.teacher_checkpoint"):
        method.build_models(build_segmenter("resnet18", NUM_CLASSES, head="proda"))


def _data(benchmark) -> list[str]:
    return [
        *faults.tiny_training(benchmark),
        "data.target.resize=[32, 64]",
        f"data.target.root={benchmark / 'cityscapes'}",
    ]


def test_cli_chain_warmup_stage1_distill(tiny_benchmark, tiny_checkpoint, tmp_path, capsys):
    warmup, stage1, distill = tmp_path / "warmup", tmp_path / "stage1", tmp_path / "distill"
    data = _data(tiny_benchmark)
    warmup_args = [*data, f"model.init_checkpoint={tiny_checkpoint}"]
    assert main(["train", "--config", "demo_proda_warmup", "--output", str(warmup), *warmup_args]) == 0
    stage1_args = [*data, f"model.init_checkpoint={warmup / 'final.pth'}", "optim.max_iters=1", "optim.stop_iter=1"]
    assert main(["train", "--config", "demo_proda", "--output", str(stage1), *stage1_args]) == 0
    teacher = f"method.teacher_checkpoint={stage1 / 'final.pth'}"
    argv = ["train", "--config", "demo_proda_distill", "--output", str(distill), *data, teacher]
    argv.append(f"model.init_checkpoint={tiny_checkpoint}")
    assert main(argv) == 0
    final = load_checkpoint(distill / "final.pth")
    assert sorted(final["models"]) == ["segmenter", "teacher"]
    assert sorted(final["optimizers"]) == ["segmenter"]
    expected = load_checkpoint(stage1 / "final.pth")["models"]["segmenter"]
    assert all(torch.equal(final["models"]["teacher"][k], v) for k, v in expected.items())
    assert main([*argv[:4], str(tmp_path / "bad"), *argv[5:], "method.kl_form=kl"]) != 0
    assert "method.kl_form must be one of" in capsys.readouterr().err
