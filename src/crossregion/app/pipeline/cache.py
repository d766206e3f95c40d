"""Stage folders: each stage runs once per config hash; a complete one is skipped, an interrupted one resumed."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossregion.files import write_text_atomically

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
# A stage whose config changed is moved here (one generation) before it reruns.
PREVIOUS_SUFFIX = ".previous"


# ------------------------------------------------------------------------------------ stages
def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    """What a finished stage hands to later ones: its folder, hash and outputs."""

    name: str
    folder: Path
    hash: str
    skipped: bool
    outputs: dict[str, Any]


class Stages:
    """Runs stages under ``output``: skip when complete with the same hash, else (re)run."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.records: dict[str, StageRecord] = {}

    def run(self, name: str, payload: Any, work: Callable[[Path], dict[str, Any]]) -> StageRecord:
        """Run ``work(folder) -> outputs`` unless ``folder/stage.json`` is complete for ``payload``."""
        folder = self.output / name
        stage_hash = _hash(payload)
        marker = folder / STAGE_FILE
        state = json.loads(marker.read_text()) if marker.exists() else None
        if state is not None and state["hash"] == stage_hash and state["complete"]:
            logger.info("stage %s: up to date, skipped", name)
            record = StageRecord(name, folder, stage_hash, True, state["outputs"])
        else:
            if state is not None and state["hash"] != stage_hash:
                # Kept, not deleted: a hash can change for a reason the user did not mean (a
                # relative path read from another folder), and a stage may have cost hours.
                previous = folder.with_name(folder.name + PREVIOUS_SUFFIX)
                logger.warning(
                    "stage %s: config changed, rerunning it from scratch; the old run is kept in %s", name, previous
                )
                if previous.exists():
                    shutil.rmtree(previous)
                folder.rename(previous)
            elif state is not None:
                logger.info("stage %s: resuming an interrupted run", name)
            folder.mkdir(parents=True, exist_ok=True)
            write_json(marker, {"hash": stage_hash, "complete": False, "outputs": {}, "payload": payload})
            start = time.perf_counter()
            outputs = work(folder)
            # Wall time and machine are for the report only; the hash (what decides a rerun) ignores them.
            write_json(
                marker,
                {
                    "hash": stage_hash,
                    "complete": True,
                    "outputs": outputs,
                    "payload": payload,
                    "wall_seconds": time.perf_counter() - start,
                    "environment": environment(),
                },
            )
            record = StageRecord(name, folder, stage_hash, False, outputs)
        self.records[name] = record
        return record


def environment() -> dict[str, str]:
    """The machine and the versions a stage ran with."""
    from crossregion.engine.checkpoint import code_version

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "crossregion": code_version(),
    }


def write_json(path: Path, data: Any) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, default=str) + "\n")
