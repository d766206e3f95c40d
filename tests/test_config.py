"""Config: presets, base inheritance, overrides, strict keys and types, cross-field checks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossregion.config import available_presets, config_from_dict, config_to_dict, load_config
from crossregion.config.io import config_to_yaml, parse_override

# sha256 of each shipped preset's resolved config as `crossregion dump-config PRESET` prints it.
PRESET_DIGESTS = Path(__file__).resolve().parent / "data" / "preset_digests.json"


def test_every_preset_loads():
    assert {"gta5_source_only", "synthia_source_only", "demo_source_only", "demo_oracle"} <= set(available_presets())
    for preset in available_presets():
        assert load_config(preset).method.name


def test_every_preset_resolves_to_its_recorded_config():
    """Rewriting presets (new fragments, bases) must not change what any of them trains. A change
    that is meant to change a preset updates its line in tests/data/preset_digests.json: the
    failure message lists the new lines."""
    recorded = json.loads(PRESET_DIGESTS.read_text(encoding="utf-8"))
    resolved = {
        name: hashlib.sha256(config_to_yaml(load_config(name)).encode()).hexdigest() for name in available_presets()
    }
    changed = {name: digest for name, digest in resolved.items() if recorded.get(name) != digest}
    gone = sorted(set(recorded) - set(resolved))
    assert not changed and not gone, (
        f"presets whose dump-config output changed or is new: {json.dumps(changed, indent=1)}; "
        f"recorded but no longer shipped: {gone}"
    )


def test_typo_suggests_the_closest_key():
    with pytest.raises(KeyError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        load_config("demo_source_only", ["optim.lrr=0.1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ValueError, match=r"'model.freeze_bn' expects bool"):
        load_config("demo_source_only", ["model.freeze_bn=1"])
    with pytest.raises(ValueError, match=r"'data.source.crop' expects 2 values"):
        load_config("demo_source_only", ["data.source.crop=[1,2,3]"])


def test_a_dataset_override_on_a_preset_without_that_dataset_says_so():
    with pytest.raises(
        KeyError, match=r"demo_source_only: the preset has no target dataset .*data.target.root.*remove it"
    ):
        load_config("demo_source_only", ["data.target.root=/data/cityscapes"])
    with pytest.raises(KeyError, match=r"demo_iast: the preset has no source dataset"):
        load_config("demo_iast", ["data.source.root=/data/gta5"])
    # Giving the whole dataset is a real change, not a stray override.
    cfg = load_config(
        "demo_source_only",
        ["data.target.name=cityscapes", "data.target.root=/data/cityscapes", "data.target.labelled=false"],
    )
    assert cfg.data.target.root == "/data/cityscapes"


def test_the_config_loader_alone_finds_every_registered_name():
    """A script that imports only the config loader (as bench/cra_step.py does) loads any preset."""
    code = (
        "from crossregion.config import load_config\n"
        "cfg = load_config('cra', ['method.pseudo_label_store=/tmp/store'])\n"
        "print(cfg.data.target.name, cfg.model.backbone)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cityscapes", "resnet101"]


def test_base_inheritance_merges_sections(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: gta5_source_only\noptim: {lr: 1.0e-3}\ndata: {source: {root: /x}}\n")
    cfg = load_config(str(child))
    assert cfg.optim.lr == 1e-3 and cfg.optim.stop_iter == 20000  # overridden / inherited
    assert cfg.data.source.root == "/x" and cfg.data.source.resize == (720, 1280)
    synthia = load_config("synthia_source_only")
    assert synthia.model.num_classes == 16 and synthia.data.source.resize == (760, 1280)


def test_bases_chain_and_compose(tmp_path):
    # A chain: grandchild -> synthia_source_only -> gta5_source_only, the nearest value wins.
    (tmp_path / "grandchild.yaml").write_text("base: synthia_source_only\noptim: {lr: 1.0e-3}\n")
    cfg = load_config(str(tmp_path / "grandchild.yaml"))
    assert cfg.optim.lr == 1e-3 and cfg.model.num_classes == 16 and cfg.optim.stop_iter == 20000
    # A list: fragments merged in order, then the file's own values.
    (tmp_path / "vgg.yaml").write_text("model: {backbone: vgg16}\n")
    (tmp_path / "both.yaml").write_text("base: [synthia_source_only, vgg.yaml]\noptim: {lr: 2.0e-3}\n")
    cfg = load_config(str(tmp_path / "both.yaml"))
    assert (cfg.model.backbone, cfg.model.num_classes, cfg.optim.lr) == ("vgg16", 16, 2e-3)


def test_a_base_cycle_is_an_error_naming_the_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="comes back to"):
        load_config(str(tmp_path / "a.yaml"))


def test_override_round_trip():
    assert parse_override("optim.lr=2.5e-4") == (["optim", "lr"], 2.5e-4)
    cfg = load_config("demo_source_only", ["optim.lr=2.5e-4", "data.source.crop=[32,64]", "model.pretrained=null"])
    assert cfg.optim.lr == 2.5e-4 and cfg.data.source.crop == (32, 64) and cfg.model.pretrained is None
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_cross_field_checks():
    with pytest.raises(ValueError, match="stop_iter"):
        load_config("demo_source_only", ["optim.stop_iter=5000"])
    with pytest.raises(ValueError, match="num_classes=13"):
        load_config("demo_source_only", ["model.num_classes=13"])


def test_class_balanced_needs_labelled_data():
    with pytest.raises(ValueError, match="class_balanced.*labelled: true"):
        load_config("gta5_fada", ["data.target.class_balanced=true"])
    with pytest.raises(ValueError, match="target_val.class_balanced"):
        load_config("gta5_fada", ["data.target_val.class_balanced=true"])
    assert load_config("gta5_fada").data.source.class_balanced


def test_unknown_preset_and_method_list_the_available_ones():
    with pytest.raises(KeyError, match="demo_source_only"):
        load_config("demo_sourceonly")
    with pytest.raises(KeyError, match="available: .*source_only"):
        load_config("demo_source_only", ["method.name=nope"])


def test_oracle_is_config_only():
    oracle = load_config("demo_oracle")
    assert oracle.method.name == "source_only"
    assert oracle.data.source.name == "cityscapes" and oracle.data.source.labelled


def test_synthia_presets_of_iast_and_proda_carry_the_official_synthia_constants():
    source, warmup, round_one = (load_config(f"synthia_iast{stage}") for stage in ("_source_only", "_warmup", ""))
    # IAST trains 19 outputs on SYNTHIA too (official NUM_CLASSES 19).
    assert (warmup.model.num_classes, warmup.method.adv_main_weight, warmup.data.source.name) == (19, 0.001, "synthia")
    assert round_one.model.num_classes == source.model.num_classes == 19 and round_one.method.proportion == 0.2
    assert warmup.model.init_checkpoint == "runs/synthia_iast_source_only/final.pth"
    proda = load_config("synthia_proda")
    assert (proda.model.num_classes, proda.method.regular_weight, proda.model.head) == (16, 0.0, "proda")
    assert load_config("synthia_proda_warmup").data.source.name == "synthia"


def test_the_official_recipes_of_iast_and_proda():
    source = load_config("gta5_iast_source_only")
    assert (source.optim.name, source.optim.lr * source.optim.head_lr_mult, source.optim.schedule) == (
        "adam",
        1e-4,
        "cosine",
    )
    assert not source.model.freeze_bn and source.data.source.scale_range == (0.54, 1.50)
    assert load_config("gta5_iast_warmup").data.source.scale_range == (0.54, 1.50)
    warmup = load_config("gta5_proda_warmup")
    assert (warmup.method.name, warmup.method.adv_main_weight, warmup.method.disc_domain_weight) == (
        "proda_warmup",
        0.01,
        1.0,
    )
    assert warmup.model.freeze_bn and warmup.data.source.flip and warmup.data.target.flip
    assert (warmup.optim.lr, warmup.optim.max_iters, warmup.optim.stop_iter) == (2.5e-4, 90000, 62500)
    for name in ("gta5_proda_warmup", "gta5_proda", "gta5_proda_distill", "gta5_proda_stage3", "demo_proda"):
        assert load_config(name).model.input_norm == "unit", name
    stage2, stage3 = load_config("gta5_proda_distill"), load_config("gta5_proda_stage3")
    assert stage2.model.pretrained == "pretrained/simclr/r101_1x_sk0.pth" and stage2.model.init_checkpoint is None
    assert stage3.model.init_checkpoint == stage3.method.teacher_checkpoint == "runs/gta5_proda_distill/final.pth"
    assert stage3.model.pretrained is None and not stage3.model.init_backbone_only
