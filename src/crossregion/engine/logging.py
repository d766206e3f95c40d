"""Training logs: ``metrics.jsonl`` (one JSON object per line), optional TensorBoard, progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from crossregion.files import append_text, write_text_atomically


class MetricWriter:
    """Appends records to ``run_dir/metrics.jsonl`` and mirrors scalars to TensorBoard if asked.

    Appending (not truncating) keeps the history of a resumed run in one file; a resume first
    cuts it back to the checkpoint's iteration (``truncate_metrics``), so no row is repeated.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ValueError(
                    "engine.tensorboard=true needs the tensorboard package: pip install 'crossregion[tensorboard]'"
                ) from error
            self._tensorboard = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        append_text(self.path, json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(key, value, record["iteration"])

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def truncate_metrics(run_dir: str | Path, iteration: int) -> None:
    """Drop the ``metrics.jsonl`` rows after ``iteration``: a resumed run writes them again."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["iteration"] <= iteration:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a row cut short by a kill: its iteration runs again
    write_text_atomically(path, "".join(kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``. A last row cut short (a run killed while appending it) is
    left out, as a resume drops it; a broken row before it is an error naming the file and line.

    Raises:
        ValueError: a row other than the last is not a JSON object.
    """
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except ValueError as error:
            if number == len(lines):
                continue
            raise ValueError(f"{path}, line {number}: not a JSON row ({error}); remove or fix that line") from error
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: not a JSON object: {line[:80]}")
        rows.append(row)
    return rows


class ProgressBar:
    """A tqdm bar over iterations with ETA and the losses of the last log window."""

    def __init__(self, *, start: int, total: int, enabled: bool) -> None:
        self._bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True, disable=not enabled)

    def update_to(self, iteration: int, losses: dict[str, float]) -> None:
        """Show ``iteration`` finished iterations and the window's mean losses."""
        self._bar.set_postfix(
            {key.removeprefix("loss/"): f"{value:.4f}" for key, value in losses.items()}, refresh=False
        )
        self._bar.update(iteration - self._bar.n)

    def close(self) -> None:
        self._bar.close()
