"""The pipeline's ``select:`` option: which saved checkpoint of a training stage goes on.

With ``select: final`` (the default, the paper's choice) a stage's last checkpoint goes on and
nothing runs. With a criterion of ``crossregion.eval.selection`` the stage ``<stage>_select``
ranks every ``model_iter*.pth`` the training stage kept by that criterion on unlabelled target
train (the trusted fraction at the λ of the store the stage trained on), evaluates the chosen
one on target val and stands in for the training stage from then on: later stages read its
checkpoint, and the results its mIoU. Its ``selection.json`` holds the ranking; its outputs keep
the final checkpoint's mIoU for comparison. How many checkpoints there are to choose from is the
stage preset's ``engine.checkpoint_period`` and ``engine.keep_last``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from crossregion.app.pipeline.cache import StageRecord, Stages, write_json
from crossregion.app.pipeline.config import FINAL_CHECKPOINT, PipelineConfig
from crossregion.app.pipeline.stages import evaluate_checkpoint
from crossregion.app.select import ImageSet, rank_checkpoints, store_rule
from crossregion.engine.checkpoint import periodic_checkpoints


def select_checkpoint(stages: Stages, cfg: PipelineConfig, trained: StageRecord, store: StageRecord) -> StageRecord:
    """``trained`` itself under ``select: final``; else the stage that picks among its checkpoints.

    Args:
        stages: the pipeline's stages.
        cfg: the pipeline config whose target settings the trained stage was evaluated with.
        trained: a finished training stage.
        store: the pseudo-label stage it trained on (its trust rule).
    """
    if cfg.select == FINAL_CHECKPOINT:
        return trained
    images = ImageSet(cfg.target.name, cfg.target.root, cfg.target.train_split, cfg.target.input_size)

    def work(folder: Path) -> dict[str, Any]:
        report = rank_checkpoints(
            periodic_checkpoints(trained.folder),
            [cfg.select],
            target=images,
            rule=store_rule(Path(store.outputs["store"])),
            device=cfg.device,
            progress=False,
        )
        write_json(folder / "selection.json", report)
        chosen = Path(report["rankings"][cfg.select][0])
        return {
            "checkpoint": str(chosen),
            "criterion": cfg.select,
            "final_checkpoint": trained.outputs["checkpoint"],
            "final_miou": trained.outputs["miou"],
            **evaluate_checkpoint(cfg, chosen, folder / "eval"),
        }

    payload = {
        "kind": "select",
        "criterion": cfg.select,
        "images": dataclasses.asdict(images),
        "upstream": [trained.hash, store.hash],
    }
    return stages.run(f"{trained.name}_select", payload, work)
