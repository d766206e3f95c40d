"""Config: presets, base inheritance, overrides, strict keys and types, cross-field checks."""

from __future__ import annotations

import pytest

from crossregion.config import available_presets, config_from_dict, config_to_dict, load_config
from crossregion.config.io import parse_override


def test_every_preset_loads():
    assert {"gta5_source_only", "synthia_source_only", "demo_source_only", "demo_oracle"} <= set(available_presets())
    for preset in available_presets():
        assert load_config(preset).method.name


def test_typo_suggests_the_closest_key():
    with pytest.raises(KeyError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        load_config("demo_source_only", ["optim.lrr=0.1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ValueError, match=r"'model.freeze_bn' expects bool"):
        load_config("demo_source_only", ["model.freeze_bn=1"])
    with pytest.raises(ValueError, match=r"'data.source.crop' expects 2 values"):
        load_config("demo_source_only", ["data.source.crop=[1,2,3]"])


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
    warmup, round_one = load_config("synthia_iast_warmup"), load_config("synthia_iast")
    assert (warmup.model.num_classes, warmup.method.adv_main_weight, warmup.data.source.name) == (16, 0.001, "synthia")
    assert round_one.model.num_classes == 16 and round_one.method.proportion == 0.2
    proda = load_config("synthia_proda")
    assert (proda.model.num_classes, proda.method.regular_weight, proda.model.head) == (16, 0.0, "proda")
    assert load_config("synthia_proda_warmup").data.source.name == "synthia"
