"""``crossregion <command>``: parses the command line and dispatches; the work lives elsewhere.

Each command is a module with ``add_arguments(parser)`` and ``main(args) -> int``. Only the
module of the command being run is imported, so ``crossregion --help`` stays fast and one
command's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import shlex
import signal
import sys
import threading
from typing import Any

from crossregion.errors import CrossregionError

# (command, module, one-line help). "data" commands are nested: ``crossregion data synth``.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("demo", "crossregion.app.demo", "run the whole pipeline on the embedded synthetic benchmark"),
    ("train", "crossregion.app.train", "train one method from a config preset"),
    ("evaluate", "crossregion.app.evaluate", "evaluate a checkpoint on a labelled split"),
    ("evaluate-predictions", "crossregion.app.evaluate_predictions", "score saved prediction PNGs"),
    ("predict", "crossregion.app.predict", "write predictions for images"),
    ("pseudo-label", "crossregion.app.pseudo_label", "pseudo labels + entropy maps for target train"),
    ("select", "crossregion.app.select", "rank checkpoints by label-free criteria on unlabelled target images"),
    ("pipeline", "crossregion.app.pipeline.run", "source -> CDA -> pseudo-label -> CRA -> evaluation"),
    ("export-checkpoint", "crossregion.app.export_checkpoint", "convert a checkpoint to the official FADA/CRA format"),
    ("dump-config", "crossregion.app.dump_config", "print a preset with every default filled in"),
    ("report", "crossregion.app.report", "one self-contained HTML page of pipeline or training runs"),
)
DATA_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("synth", "crossregion.app.data_synth", "generate the synthetic GTA5-like -> Cityscapes-like benchmark"),
    ("check", "crossregion.app.data_check", "validate a dataset folder and print its class histogram"),
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
    previous_handler = _stop_on_sigterm()
    try:
        return int(args._run(args) or 0)
    except (OSError, ValueError, KeyError, CrossregionError) as error:
        # User errors (bad paths, configs, checkpoints, failed writes, a NaN loss) end with the
        # message, not a traceback. OSError covers FileNotFoundError and the project's
        # WriteFailedError. Anything else (torch's RuntimeError among them) keeps its traceback:
        # it is a bug or a failure a developer needs to see whole.
        if args.verbose:
            raise
        print(f"crossregion: error: {error_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        if args.verbose:
            raise
        terminated = isinstance(interrupt, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"crossregion: {what}; {how_to_continue(args.command, argv)}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM, what ``kill`` and job schedulers send: handled as Ctrl-C is (every clean-up that a
    Ctrl-C runs runs), and the command ends with the same line on how to continue."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _stop_on_sigterm() -> Any:
    """Turn SIGTERM into ``Terminated`` while a command runs; returns the handler to restore
    (None off the main thread, where Python cannot set one)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


# "Original Traceback (most recent call last):" starts the worker's traceback in the message.
_WORKER_TRACEBACK = "\nOriginal Traceback"
_EXCEPTION_PREFIX = re.compile(r"^[\w.]+: ")


def error_message(error: BaseException) -> str:
    """The message of a user error, as one line when it came from a DataLoader worker.

    A DataLoader re-raises a worker's error with the worker's whole traceback in the message; its
    last line is the error itself ("ValueError: cannot read image X: ..."), the same message a
    run without workers shows.
    """
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if _WORKER_TRACEBACK in message:
        message = _EXCEPTION_PREFIX.sub("", message.rstrip().splitlines()[-1])
    return message


def how_to_continue(command: str, argv: list[str]) -> str:
    """What the user runs to continue an interrupted command."""
    if command == "train":
        resumed = argv if "--resume" in argv else [*argv, "--resume"]
        return f"continue from the last checkpoint with: crossregion {shlex.join(resumed)}"
    if command in ("pseudo-label", "pipeline", "demo"):
        return "rerun the same command to continue where it stopped (finished work is kept)"
    if command == "data":
        return "rerun the same command to finish the benchmark"
    return "rerun the same command; it writes its outputs again"


if __name__ == "__main__":
    sys.exit(main())
