"""The fault-injection harness: run a command on a fault, judge the outcome, count it.

Every case ends in one of the outcomes of docs/reliability.md: a clear error (non-zero exit,
no traceback, the offending file or key named) or the right result (a rerun or resume equal to
the uninterrupted run, or the right score), or a failure: a traceback, a wrong result (exit 0 on
a fault, or a result that differs), data lost (an input changed, or a finished output gone).
``judge`` records the outcome (the table ``conftest.py`` prints) before it asserts, so a failing
case is counted as what it did, not dropped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# The classes of docs/reliability.md, in table order.
CLASSES = (
    "bad config",
    "bad dataset",
    "bad checkpoint",
    "bad store",
    "bad predictions",
    "existing outputs",
    "foreign files under an output",
    "moved and copied run folders",
    "damaged run records",
    "concurrent writers",
    "malicious and incomplete checkpoints",
    "override parsing",
    "impossible requests",
    "kill -9 and rerun",
    "write failure (RLIMIT_FSIZE)",
    "Ctrl-C (SIGINT)",
    "SIGTERM",
)


@dataclass
class Outcome:
    fault_class: str
    case: str
    traceback: bool
    wrong_result: bool
    data_lost: bool
    unnamed: bool

    @property
    def good(self) -> bool:
        return not (self.traceback or self.wrong_result or self.data_lost or self.unnamed)


OUTCOMES: list[Outcome] = []


def tree_digest(*roots: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``roots`` (a file root counts as itself)."""
    digest = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``crossregion ARGV`` in this process: (exit status, stdout + stderr).

    An exception escaping ``cli.main`` is what a user sees as a traceback: it comes back as
    status 1 with the formatted traceback as output.
    """
    from crossregion.cli import main

    capsys.readouterr()
    try:
        status = main([str(arg) for arg in argv])
    except BaseException:  # noqa: BLE001 - any escape is the outcome under test
        captured = capsys.readouterr()
        return 1, captured.out + captured.err + traceback.format_exc()
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def cli_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "crossregion", *[str(arg) for arg in argv]]


def cli_environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_subprocess(argv: list[str], *, file_size_limit: int | None = None, timeout: float = 300) -> tuple[int, str]:
    """``crossregion ARGV`` in a child process, optionally under ``RLIMIT_FSIZE``."""

    def limit() -> None:
        if file_size_limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    done = subprocess.run(
        cli_command(argv), env=cli_environment(), capture_output=True, text=True, timeout=timeout, preexec_fn=limit
    )
    return done.returncode, done.stdout + done.stderr


def _default_signal_handling() -> None:
    """In the child before exec: Ctrl-C acts as in a terminal, even when pytest itself runs in the
    background (a non-interactive shell starts background jobs with SIGINT ignored, and the
    child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_when(
    argv: list[str], ready, *, sig: int, delay: float, output: Path, timeout: float = 300, attempts: int = 5
) -> tuple[int, str]:
    """Start ``crossregion ARGV``, wait until ``ready()`` holds, stop it there, and send ``sig``
    (after ``delay`` seconds, while it stands still).

    On a loaded machine the command can finish between two looks at ``ready()``; that attempt did
    not inject the fault, so ``output`` is removed and the command started again, up to
    ``attempts`` times. Returns (exit status, output text) of the last attempt.
    """
    for _ in range(attempts):
        process = subprocess.Popen(
            cli_command(argv),
            env=cli_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_default_signal_handling,
        )
        deadline = time.monotonic() + timeout
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        # Freeze the command the moment it is ready, so a fast machine cannot finish it before the
        # signal lands; the signal is delivered when it continues.
        interrupted = process.poll() is None
        if interrupted:
            process.send_signal(signal.SIGSTOP)
            time.sleep(delay)
            process.send_signal(sig)
            process.send_signal(signal.SIGCONT)
        text, _ = process.communicate(timeout=timeout)
        if interrupted:
            return process.returncode, text
        shutil.rmtree(output, ignore_errors=True)
    pytest.skip(
        f"the command finished before the signal could land, {attempts} times: this machine is too fast "
        "for the case's input to be interrupted mid-run"
    )


def judge(
    fault_class: str,
    case: str,
    *,
    status: int,
    output: str,
    named: list[str] = (),
    inputs_before: dict[str, str] | None = None,
    inputs_after: dict[str, str] | None = None,
    expect_error: bool = True,
    same_result: bool = True,
    harm: bool = False,
) -> None:
    """Record and assert one case.

    Args:
        status, output: what the command did.
        named: strings the message must contain (the offending file or key).
        inputs_before, inputs_after: ``tree_digest`` of everything outside the output.
        expect_error: the fault must stop the command (non-zero exit); False where the command
            must cope and give the right result (``same_result``).
        harm: the command did what it must never do, whatever its exit status (ran code from a
            file, or spoiled another process's run): a wrong result.
    """
    assert fault_class in CLASSES
    outcome = Outcome(
        fault_class=fault_class,
        case=case,
        traceback="Traceback" in output,
        wrong_result=harm or ((status == 0) if expect_error else (status != 0 or not same_result)),
        data_lost=inputs_before != inputs_after,
        unnamed=expect_error and not all(text in output for text in named),
    )
    OUTCOMES.append(outcome)
    assert not outcome.traceback, output
    assert not outcome.wrong_result, f"status {status}, same result {same_result}, harm {harm}:\n{output}"
    assert not outcome.data_lost, "an input changed"
    assert not outcome.unnamed, f"expected {named} in:\n{output}"


def outcome_table(outcomes: list[Outcome]) -> str:
    """The markdown table of docs/reliability.md."""
    lines = [
        "| class | cases tried | clear error or right result | tracebacks | wrong results | data lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = [[o for o in outcomes if o.fault_class == name] for name in CLASSES]
    for name, row in [*zip(CLASSES, rows), ("**all**", outcomes)]:
        if row:
            lines.append(
                f"| {name} | {len(row)} | {sum(o.good for o in row)} | {sum(o.traceback for o in row)} | "
                f"{sum(o.wrong_result for o in row)} | {sum(o.data_lost for o in row)} |"
            )
    return "\n".join(lines) + "\n"


SIGKILL = signal.SIGKILL
SIGINT = signal.SIGINT
SIGTERM = signal.SIGTERM


# Overrides for a two-iteration run on the tiny benchmark (``tiny_benchmark``): seconds on a CPU.
# ``batch`` names the training batch: ``source`` (source-only) or ``target`` (the store methods).
def tiny_training(benchmark: Path, iterations: int = 2, batch: str = "source") -> list[str]:
    root = benchmark / ("gta5" if batch == "source" else "cityscapes")
    return [
        "model.backbone=resnet18",
        "data.batch_size=2",
        f"optim.max_iters={iterations}",
        f"optim.stop_iter={iterations}",
        "engine.eval_period=0",
        "engine.device=cpu",
        "engine.log_period=1",
        "data.num_workers=0",
        f"data.{batch}.resize=[32, 64]",
        "data.target_val.resize=[32, 64]",
        f"data.{batch}.root={root}",
        f"data.target_val.root={benchmark / 'cityscapes'}",
    ]


def pseudo_label_argv(benchmark: Path, checkpoint: Path, store: Path) -> list[str]:
    """``crossregion pseudo-label`` of ``checkpoint`` on the tiny benchmark's target train, on the CPU."""
    return [
        "pseudo-label",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "cityscapes",
        "--root",
        str(benchmark / "cityscapes"),
        "--output",
        str(store),
        "--device",
        "cpu",
        "--workers",
        "0",
    ]
