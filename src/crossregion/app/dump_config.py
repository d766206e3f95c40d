"""``crossregion dump-config PRESET [key=value ...]``: print a preset with every default filled in."""

from __future__ import annotations

import argparse

from crossregion.config.io import available_presets, config_to_yaml, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", nargs="?", help="preset name or YAML path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=2.5e-4")
    parser.add_argument("--list", action="store_true", help="list the shipped presets")


def main(args: argparse.Namespace) -> int:
    if args.list or args.preset is None:
        print("\n".join(available_presets()))
        return 0
    print(config_to_yaml(load_config(args.preset, args.overrides)), end="")
    return 0
