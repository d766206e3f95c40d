"""Session fixtures of the fault-injection suite, and the table of its outcomes.

``pytest --fault-table PATH`` also writes the table (docs/reliability.md quotes it). Importing
``crossregion.app`` registers every method, dataset and backbone name, as the command
line does, so tests may load configs directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import crossregion.app  # noqa: F401  (fills the config registries, as the command line does)

sys.path.insert(0, str(Path(__file__).parent))
import faults  # noqa: E402


def pytest_addoption(parser) -> None:
    parser.addoption("--fault-table", default=None, help="write the fault-injection outcome table here")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not faults.OUTCOMES:
        return
    table = faults.outcome_table(faults.OUTCOMES)
    terminalreporter.write_sep("=", "fault injection outcomes")
    terminalreporter.write(table)
    path = config.getoption("--fault-table")
    if path:
        Path(path).write_text(table)


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """4 source, 4 target train and 2 target val images of 32x64; never modified by a test."""
    from crossregion.synth.benchmark import generate_benchmark

    root = tmp_path_factory.mktemp("fault_benchmark")
    generate_benchmark(root, source_images=4, target_train_images=4, target_val_images=2, height=32, width=64, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_benchmark, tmp_path_factory) -> Path:
    """A 19-class ResNet-18 after two source-only iterations."""
    from crossregion.cli import main

    run = tmp_path_factory.mktemp("fault_run") / "run"
    argv = ["train", "--config", "demo_source_only", "--output", str(run), *faults.tiny_training(tiny_benchmark)]
    assert main(argv) == 0
    return run / "final.pth"


@pytest.fixture(scope="session")
def tiny_store(tiny_benchmark, tiny_checkpoint, tmp_path_factory) -> Path:
    """The pseudo-label store of ``tiny_checkpoint`` on target train."""
    from crossregion.cli import main

    store = tmp_path_factory.mktemp("fault_store") / "store"
    assert main(faults.pseudo_label_argv(tiny_benchmark, tiny_checkpoint, store)) == 0
    return store
