"""YAML presets -> ``ExperimentConfig``: chains of ``base:``, dotted overrides, strict typing.

A preset is a name (``gta5_source_only``, a file in the package's ``configs/`` folder) or a path to
a YAML file. Its ``base:`` names another preset whose values it overrides key by key, and so on up
the chain. Overrides ``optim.lr=2.5e-4`` read numbers, lists and quoted strings as YAML and keep
any other text as typed (``parse_override``). An unknown key or a value of the wrong type raises,
naming the key and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from crossregion.config.schema import ExperimentConfig
from crossregion.files import write_text_atomically
from crossregion.registry import BACKBONES, DATASETS, METHOD_CONFIGS

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
# Pipeline presets (``crossregion pipeline``) are a different schema, so they live apart.
PIPELINE_PRESET_DIR = PRESET_DIR / "pipelines"


def available_presets(preset_dir: Path = PRESET_DIR) -> list[str]:
    """Names of the presets shipped in the package (training presets unless told otherwise)."""
    return sorted(path.stem for path in preset_dir.glob("*.yaml"))


def find_preset(name_or_path: str, preset_dir: Path = PRESET_DIR) -> Path:
    """The YAML file of a preset name or a path; unknown names list the available presets."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return path
    preset = preset_dir / f"{name_or_path}.yaml"
    if not preset.is_file():
        close = difflib.get_close_matches(name_or_path, available_presets(preset_dir), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"unknown preset {name_or_path!r}; available: {', '.join(available_presets(preset_dir))} "
            f"(or give a path to a .yaml file).{hint}"
        )
    return preset


def _read_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as file:
        try:
            data = yaml.safe_load(file)
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, recursively for mappings; other values are replaced whole."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_raw(name_or_path: str, preset_dir: Path = PRESET_DIR) -> dict[str, Any]:
    """The preset as a plain dict with its chain of ``base:`` presets merged in, the nearest last.

    A base may have a base of its own, so a new method's preset can build on a shared one
    (``demo_proda_stage3`` -> ``demo_proda_distill`` -> ``demo_source_only``), and ``base:`` may list several
    presets (fragments such as a dataset or a backbone), merged in order. The shipped fragments are
    ``configs/fragments/*.yaml``, named ``fragments/<name>``: a name is a path under ``preset_dir``,
    and ``available_presets`` lists only the folder's own files. A chain that comes back to a
    preset it already holds is an error naming the chain.
    """
    return _load_chain(find_preset(name_or_path, preset_dir), preset_dir, ())


def _load_chain(path: Path, preset_dir: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise ValueError(f"{seen[0]}: its base: chain comes back to {path}: {chain}; remove one base:")
    data = _read_yaml(path)
    bases = data.pop("base", None)
    # ``base: a`` or ``base: [a, b]``: several bases are merged in order, each over the previous.
    merged: dict[str, Any] = {}
    for base_name in [] if bases is None else bases if isinstance(bases, list) else [bases]:
        # A file name is relative to the preset that names it; anything else is a preset name.
        is_file = str(base_name).endswith((".yaml", ".yml"))
        base_path = find_preset(str(path.parent / base_name) if is_file else str(base_name), preset_dir)
        merged = _merge(merged, _load_chain(base_path, preset_dir, (*seen, resolved)))
    return _merge(merged, data)


# A plain number YAML 1.1 reads as a string ("1e-4": no dot); meant as a number.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=2.5e-4"`` -> (``["optim", "lr"]``, ``0.00025``).

    The value is what the user typed: YAML reads numbers, booleans, ``null``, ``[lists]``,
    ``{mappings}`` and quoted strings, and any other text is the string itself, ``#`` and ``: ``
    included (YAML would cut a comment off or make a mapping of it: ``root=data/gta5 #v2``
    must not train on ``data/gta5``).
    """
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. optim.lr=2.5e-4")
    return key.split("."), _parse_value(text, value)


def _parse_value(text: str, value: str) -> Any:
    stripped = value.strip()
    if not stripped:
        return None
    # A list, a mapping or a quoted string is YAML syntax the user chose; it must parse whole.
    syntax = stripped[0] in "[{\"'"
    try:
        tokens = list(yaml.scan(stripped))
        parsed = yaml.safe_load(stripped)
    except yaml.YAMLError as error:
        if syntax:
            raise ValueError(f"override {text!r}: not a valid YAML list, mapping or string: {error}") from error
        return value
    # The YAML value ends where its last token does; anything after it was a comment.
    whole = tokens[-2].end_mark.index == len(stripped)
    if syntax:
        if not whole:
            raise ValueError(
                f"override {text!r}: text follows the end of the value (a YAML comment?); "
                "quote the whole value to keep it as a string"
            )
        return parsed
    if not whole or isinstance(parsed, (dict, list)):
        return value
    if isinstance(parsed, str):
        return float(stripped) if _NUMBER.fullmatch(stripped) else value
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with each dotted override set (new intermediate mappings are created)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
            node[key] = child = dict(child)
            node = child
        node[keys[-1]] = value
    return data


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a preset, apply overrides and build the typed, validated config."""
    raw = load_raw(name_or_path)
    preset_data = raw.get("data") or {}
    data = apply_overrides(raw, overrides)
    for kind in ("source", "target", "target_val"):
        added = (data.get("data") or {}).get(kind)
        # An override such as data.target.root=... on a preset without a target dataset would
        # otherwise fail as a missing data.target.name, which hides the cause.
        if preset_data.get(kind) is None and isinstance(added, dict) and "name" not in added:
            keys = ", ".join(f"data.{kind}.{key}" for key in added)
            raise KeyError(
                f"{name_or_path}: the preset has no {kind} dataset (data.{kind} is not set), so the override of "
                f"{keys} has nothing to change: remove it"
            )
    return config_from_dict(data, source=str(name_or_path))


def config_from_dict(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Build an ``ExperimentConfig`` from plain data (a loaded preset or a checkpoint's config)."""
    method_data = data.get("method")
    if not isinstance(method_data, dict) or "name" not in method_data:
        raise KeyError(f"{source}: missing method.name; available methods: {', '.join(METHOD_CONFIGS.names())}")
    method_config_class = METHOD_CONFIGS.get(str(method_data["name"]))
    try:
        config = _build(ExperimentConfig, data, "", {"method": method_config_class})
    except (ValueError, KeyError) as error:
        message = error.args[0] if error.args else str(error)
        raise type(error)(f"{source}: {message}") from error
    registered = [("model.backbone", BACKBONES, config.model.backbone)] + [
        (f"data.{kind}.name", DATASETS, spec.name)
        for kind in ("source", "target", "target_val")
        if (spec := getattr(config.data, kind)) is not None
    ]
    for key, registry, name in registered:
        try:
            registry.get(name)
        except KeyError as error:  # the message lists the known names
            raise KeyError(f"{source}: {key}: {error.args[0]}") from None
    return config


def _build(cls: type, data: Any, prefix: str, replace_types: dict[str, type] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise KeyError(f"unknown config key '{prefix}{key}'{hint}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        kind = (replace_types or {}).get(name, hints[name])
        kwargs[name] = _convert(kind, data[name], f"{prefix}{name}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise KeyError(f"missing config key(s) {', '.join(prefix + m for m in missing)}")
    return cls(**kwargs)


def _convert(kind: Any, value: Any, key: str) -> Any:
    """``value`` checked against the type annotation ``kind``; raises naming ``key``."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except (ValueError, KeyError) as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, f"{key}.")
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} expects a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, key) for item in value)
        if len(value) != len(args):
            raise ValueError(f"config key {key!r} expects {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(arg, item, key) for arg, item in zip(args, value))
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"config key {key!r} must be a finite number, got {value!r}")
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is bool or kind is str:
        if isinstance(value, kind):
            return value
    else:
        raise ValueError(f"config key {key!r} has an unsupported type {kind!r}")
    raise ValueError(f"config key {key!r} expects {kind.__name__}, got {type(value).__name__} {value!r}")


def config_to_dict(cfg: Any) -> Any:
    """A config (or any part of it) as plain YAML-safe data: tuples become lists."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(item) for item in cfg]
    return cfg


def config_identity(cfg: Any) -> Any:
    """``config_to_dict`` without the fields left at their defaults: what makes two runs differ.

    A cached pipeline stage is keyed by this, so a new config field whose default keeps the old
    behaviour does not invalidate stages that took hours.
    """
    if not dataclasses.is_dataclass(cfg):
        return config_to_dict(cfg)
    identity = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            identity[f.name] = config_identity(value)
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is dataclasses.MISSING or config_to_dict(value) != config_to_dict(default):
            identity[f.name] = config_to_dict(value)
    return identity


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML, sections in schema order."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: ExperimentConfig, path: str | Path, code_version: str) -> None:
    """Write the resolved config and the code version (``run_dir/config.yaml``)."""
    text = f"# code_version: {code_version}\n" + config_to_yaml(cfg)
    write_text_atomically(path, text)


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs, as ``key: old -> new`` lines."""
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        left, right = old.get(key), new.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            lines.extend(config_differences(left, right, f"{prefix}{key}."))
        elif left != right:
            lines.append(f"{prefix}{key}: {left!r} -> {right!r}")
    return lines
