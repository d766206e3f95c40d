"""Stage folders: each stage runs once per hash of its inputs; a complete one is skipped, an interrupted one resumed."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossregion.files import read_json, write_text_atomically

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
# A stage whose inputs changed is moved to ``<stage>.previous1`` (then ``.previous2``, ...: every
# replaced generation is kept) before it reruns.
PREVIOUS_SUFFIX = ".previous"


# ------------------------------------------------------------------------------------ stages
def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def content_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (their paths relative to it, and bytes)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:  # a folder's file names are part of its content
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class StageRecord:
    """What a finished stage hands to later ones.

    ``outputs`` holds its results; a file or folder it wrote is a path under the run folder (as
    the run folder is spelled in this run). ``hash`` identifies the stage's inputs and the content
    of what it wrote, so a later stage that reads it reruns when either changes.
    """

    name: str
    folder: Path
    hash: str
    skipped: bool
    outputs: dict[str, Any]


class Stages:
    """Runs stages under ``output``: skip when complete with the same hash, else (re)run.

    ``stage.json`` records a stage's files relative to the run folder with their content digests,
    so a moved or copied run folder reads its own files, and a stage whose files are gone or
    changed runs again.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.records: dict[str, StageRecord] = {}

    def relative(self, path: str | Path) -> str:
        """A stage output's path relative to the run folder: the same wherever the folder is."""
        return Path(path).resolve().relative_to(self.output.resolve()).as_posix()

    def run(self, name: str, payload: Any, work: Callable[[Path], dict[str, Any]]) -> StageRecord:
        """Run ``work(folder) -> outputs`` unless ``folder/stage.json`` is complete for ``payload``
        and the files it records are intact. ``work`` returns the files it wrote as ``Path``s
        inside ``folder``."""
        folder = self.output / name
        stage_hash = _hash(payload)
        marker = folder / STAGE_FILE
        state = _read_state(marker) if marker.exists() else None
        if state is not None and state["hash"] == stage_hash and state["complete"]:
            digests, problem = self._check_outputs(folder, state)
            if problem is None:
                logger.info("stage %s: up to date, skipped", name)
                return self._record(name, stage_hash, True, state["outputs"], digests)
            self._keep_aside(folder, problem)
        elif state is not None and state["hash"] != stage_hash:
            self._keep_aside(folder, "its inputs changed")
        elif state is not None:
            logger.info("stage %s: resuming an interrupted run", name)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"hash": stage_hash, "complete": False, "outputs": {}, "payload": payload})
        start = time.perf_counter()
        outputs = work(folder)
        digests = {key: content_digest(value) for key, value in outputs.items() if isinstance(value, Path)}
        recorded = {key: self.relative(value) if key in digests else value for key, value in outputs.items()}
        # Wall time and machine are for the report only; the hash (what decides a rerun) ignores them.
        write_json(
            marker,
            {
                "hash": stage_hash,
                "complete": True,
                "outputs": recorded,
                "digests": digests,
                "payload": payload,
                "wall_seconds": time.perf_counter() - start,
                "environment": environment(),
            },
        )
        return self._record(name, stage_hash, False, recorded, digests)

    def _record(
        self, name: str, stage_hash: str, skipped: bool, recorded: dict[str, Any], digests: dict[str, str]
    ) -> StageRecord:
        outputs = {key: str(self.output / value) if key in digests else value for key, value in recorded.items()}
        identity = _hash({"stage": stage_hash, "outputs": digests})
        record = StageRecord(name, self.output / name, identity, skipped, outputs)
        self.records[name] = record
        return record

    def _check_outputs(self, folder: Path, state: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        """The digests of a complete stage's files, or why the stage cannot be reused: a recorded
        file missing, changed, or outside ``folder`` (a record of another run folder)."""
        outputs = state["outputs"]
        if "digests" not in state:
            return self._adopt_legacy_record(folder, state)
        digests = state["digests"]
        for key, digest in digests.items():
            path = self.output / str(outputs.get(key))
            if not _inside(path, folder):
                return digests, f"{STAGE_FILE} records {key} {outputs.get(key)!r}, which is not in {folder}"
            if not path.exists():
                return digests, f"its {key} {path} is missing"
            if content_digest(path) != digest:
                return digests, f"its {key} {path} changed since the stage finished"
        return digests, None

    def _adopt_legacy_record(self, folder: Path, state: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        """A record written before stage files were recorded relative to the run folder: its paths
        are as the first run spelled them. Reused only when they are this folder's own files;
        then recorded anew, relative and with digests."""
        outputs = dict(state["outputs"])
        digests = {}
        for key in LEGACY_FILE_OUTPUTS:
            if key not in outputs:
                continue
            path = Path(outputs[key])
            if not _inside(path, folder) or not path.exists():
                return {}, (
                    f"{STAGE_FILE} records {key} {path}, which is not in {folder} "
                    "(a run folder moved or copied before stage records were relative)"
                )
            digests[key] = content_digest(path)
            outputs[key] = self.relative(path)
        write_json(folder / STAGE_FILE, {**state, "outputs": outputs, "digests": digests})
        state.update(outputs=outputs, digests=digests)
        return digests, None

    def _keep_aside(self, folder: Path, reason: str) -> None:
        """Move a stage folder that must rerun to the next free ``<stage>.previousN``."""
        number = 1
        while (previous := folder.with_name(f"{folder.name}{PREVIOUS_SUFFIX}{number}")).exists():
            number += 1
        folder.rename(previous)
        logger.warning(
            "stage %s: %s; rerunning it from scratch, the old run is kept in %s", folder.name, reason, previous
        )


# The keys under which stages recorded their files before records held digests.
LEGACY_FILE_OUTPUTS = ("checkpoint", "store")


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _read_state(marker: Path) -> dict[str, Any]:
    """A stage's ``stage.json``; a damaged one is an error naming it."""
    state = read_json(marker)
    if not isinstance(state, dict) or not {"hash", "complete", "outputs"} <= set(state):
        raise ValueError(
            f"{marker} is not a stage record (no hash, complete and outputs); remove it to rerun the stage"
        )
    return state


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
