"""``crossregion <command>``: parses the command line and dispatches; the work lives elsewhere.

Each command is a module with ``add_arguments(parser)`` and ``main(args) -> int``. Only the
module of the command being run is imported, so ``crossregion --help`` stays fast and one
command's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (command, module, one-line help). "data" commands are nested: ``crossregion data synth``.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("demo", "crossregion.demo", "run the whole pipeline on the embedded synthetic benchmark"),
    ("train", "crossregion.engine.launch", "train one method from a config preset"),
    ("evaluate", "crossregion.eval.evaluate", "evaluate a checkpoint on a labelled split"),
    ("evaluate-predictions", "crossregion.eval.predictions", "score saved prediction PNGs"),
    ("predict", "crossregion.eval.predict", "write predictions for images"),
    ("pseudo-label", "crossregion.pseudo_label", "pseudo labels + entropy maps for target train"),
    ("pipeline", "crossregion.pipeline", "source -> CDA -> pseudo-label -> CRA -> evaluation"),
    ("export-checkpoint", "crossregion.models.checkpoint_io", "convert a checkpoint to the official FADA/CRA format"),
    ("dump-config", "crossregion.config.dump", "print a preset with every default filled in"),
    ("report", "crossregion.report", "one self-contained HTML page of pipeline or training runs"),
)
DATA_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("synth", "crossregion.data.synth", "generate the synthetic GTA5-like -> Cityscapes-like benchmark"),
    ("check", "crossregion.data.check", "validate a dataset folder and print its class histogram"),
)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser; only the command ``argv`` selects gets its module imported and its options."""
    from crossregion import __version__

    selected = [token for token in argv if not token.startswith("-")][:2]
    command = selected[0] if selected else None
    data_command = selected[1] if command == "data" and len(selected) > 1 else None

    parser = argparse.ArgumentParser(
        prog="crossregion",
        description="Cross-Region Adaptation (CRA) for domain-adaptive semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"crossregion {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, help_text in COMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _attach(sub, module)
    data = commands.add_parser("data", help="dataset tools: synth, check", description="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    for name, module, help_text in DATA_COMMANDS:
        sub = data_commands.add_parser(name, help=help_text, description=help_text)
        if name == data_command:
            _attach(sub, module)
    return parser


def _attach(sub: argparse.ArgumentParser, module_name: str) -> None:
    module = importlib.import_module(module_name)
    module.add_arguments(sub)
    sub.set_defaults(_run=module.main)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as error:
        # User errors (bad paths, configs, checkpoints) end with the message, not a traceback.
        if args.verbose:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"crossregion: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
