"""Training checkpoints: one atomically written file with the complete state of a run.

Contract (docs/architecture.md): a ``torch.save``d dict with ``format`` ("crossregion"),
``format_version``, ``code_version``, ``iteration``, ``config`` (resolved, plain dict),
``model`` (the ``build_segmenter`` arguments), ``models``, ``optimizers``, ``schedulers``,
``scaler``, ``rng`` and ``data_state``. Files are ``model_iter{N:06d}.pth``; ``last.pth`` and, at
the end, ``final.pth`` are hard links to the newest one (a copy where links are unsupported).
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossregion.files import link_atomically, save_torch_atomically
from crossregion.models.weights import read_torch_file

FORMAT = "crossregion"
FORMAT_VERSION = 1
LAST_NAME = "last.pth"
FINAL_NAME = "final.pth"
_PERIODIC = re.compile(r"model_iter(\d+)\.pth$")


def code_version() -> str:
    """``git describe`` of the source tree when it is a git checkout, else the package version."""
    from crossregion import __version__

    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+git.{described}" if described else __version__


def periodic_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``model_iter*.pth`` files of a run, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("model_iter*.pth") if (m := _PERIODIC.search(p.name))]
    return [p for _, p in sorted(found)]


def write_checkpoint(state: dict[str, Any], run_dir: str | Path, *, keep_last: int, final: bool = False) -> Path:
    """Save ``state`` as ``model_iter{N}.pth``, point ``last.pth`` at it, keep the newest ``keep_last``.

    With ``final=True`` ``final.pth`` points at it too.
    """
    run_dir = Path(run_dir)
    path = run_dir / f"model_iter{state['iteration']:06d}.pth"
    save_torch_atomically(state, path)
    link_atomically(path, run_dir / LAST_NAME)
    if final:
        link_atomically(path, run_dir / FINAL_NAME)
    for old in periodic_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


# What a resume reads from a checkpoint (``method_state`` is optional: older runs have none).
REQUIRED_ENTRIES = (
    "iteration",
    "config",
    "models",
    "optimizers",
    "schedulers",
    "scaler",
    "rng",
    "data_state",
)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU; a missing, truncated, foreign or incomplete file is a clear error.

    Only tensors and plain data are unpickled (``read_torch_file``): a file that would run code
    when loaded is refused, not run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = read_torch_file(path, what="checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a crossregion training checkpoint; to start from an official FADA/CRA "
            "checkpoint use model.init_checkpoint instead of --resume"
        )
    missing = [entry for entry in REQUIRED_ENTRIES if entry not in state]
    if missing:
        raise ValueError(
            f"checkpoint {path} has no {', '.join(repr(entry) for entry in missing)} "
            f"entr{'y' if len(missing) == 1 else 'ies'}: it is incomplete; resume from another checkpoint of the run "
            "or start a new --output"
        )
    return state


def capture_rng() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) generator states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
