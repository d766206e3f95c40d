"""The results tables: ``results.md`` and the HTML report render the same cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossregion.app.pipeline.config import BASELINE_TITLES


# ------------------------------------------------------------------------------------ report
def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


@dataclass(frozen=True)
class ResultsTable:
    """One table of the results, as text cells; ``results.md`` and the HTML report both render it."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    lead: str = ""  # a line shown above the table


def results_tables(results: dict[str, Any]) -> list[ResultsTable]:
    """The regime, Table 1 (CDA vs +CRA) and, with baselines, Table 3 and self-distillation."""
    methods = results["methods"]
    tables = [
        ResultsTable(
            "Regime",
            (
                "CDA",
                "CDA mIoU",
                "CDA + target BN stats",
                "trusted fraction",
                "trusted precision",
                "pseudo-label accuracy",
                "errors in untrusted (CDA → CRA)",
            ),
            [
                (
                    name,
                    _number(row["cda"]),
                    _number(row["bn_target"]),
                    _percent(row["trusted_fraction"]),
                    _percent(row["trusted_precision"]),
                    _percent(row["pseudo_label_accuracy"]),
                    f"{_percent(row['error_share_untrusted_cda'])} → {_percent(row['error_share_untrusted_cra'])}",
                )
                for name, row in methods.items()
            ],
            lead=f"source-only {_number(results['source_only'])} · oracle {_number(results['oracle'])}",
        ),
        ResultsTable(
            "Table 1: CRA after each CDA method",
            ("CDA method", "base mIoU", "+CRA mIoU", "Δ"),
            [
                (name, _number(row["cda"]), _number(row["cra"]), _delta(row["cda"], row["cra"]))
                for name, row in methods.items()
            ],
        ),
    ]
    baselines = [b for b in BASELINE_TITLES if any(b in row for row in methods.values())]
    if baselines:
        tables.append(
            ResultsTable(
                "Table 3: CRA against the baselines on the same pseudo labels",
                ("CDA", "CDA mIoU", *(BASELINE_TITLES[b] for b in baselines), "CRA"),
                [
                    (name, _number(row["cda"]), *(_number(row.get(b)) for b in baselines), _number(row["cra"]))
                    for name, row in methods.items()
                ],
            )
        )
    mechanism = {name: row["mechanism"] for name, row in methods.items() if row.get("mechanism")}
    if mechanism:
        tables += mechanism_tables(mechanism)
    if any("self_distill" in row for row in methods.values()):
        tables.append(
            ResultsTable(
                "Self-distillation",
                ("CDA", "+CRA", "+CRA +SD"),
                [(name, _number(row["cra"]), _number(row.get("self_distill"))) for name, row in methods.items()],
            )
        )
    return tables


def _first_last(course: list | None, percent: bool = False) -> str:
    """``first → last`` of a logged diagnostic's (iteration, value) pairs."""
    if not course:
        return "–"
    show = _percent if percent else (lambda v: f"{v:.1e}")
    return f"{show(course[0][1])} → {show(course[-1][1])}"


def mechanism_tables(mechanism: dict[str, dict[str, Any]]) -> list[ResultsTable]:
    """CRA's mechanism per CDA method: the alignment over the stage and the feature gap, then the
    per-class trusted coverage of the pseudo labels."""
    trained = [name for name in ("cra", *BASELINE_TITLES) if any(name in m["feature_gap"] for m in mechanism.values())]
    titles = {"cra": "+CRA", **BASELINE_TITLES}
    tables = [
        ResultsTable(
            "Mechanism: does the alignment act?",
            (
                "CDA",
                "D accuracy, trusted (first → last log)",
                "D accuracy, untrusted",
                "gradient ratio, CRA's adversarial term / trusted CE",
                "gradient ratio, entropy term / trusted CE",
                "feature gap, CDA",
                *(f"feature gap, {titles[name]}" for name in trained),
            ),
            [
                (
                    name,
                    _first_last(m["alignment"].get("cra", {}).get("disc_acc_trusted"), percent=True),
                    _first_last(m["alignment"].get("cra", {}).get("disc_acc_untrusted"), percent=True),
                    _first_last(m["alignment"].get("cra", {}).get("grad_ratio")),
                    _first_last(m["alignment"].get("entropy_min", {}).get("grad_ratio")),
                    _number(m["feature_gap"]["cda"]),
                    *(_number(m["feature_gap"].get(trained_name)) for trained_name in trained),
                )
                for name, m in mechanism.items()
            ],
            lead="D accuracy: share of each region's pixels the fine-grained discriminator assigns to it (50% = it "
            "cannot tell them apart). Gradient ratio: norm of the weighted region term's gradient over the trusted "
            "CE's, on the segmenter's parameters. Feature gap: distance between the untrusted and trusted class "
            "means of the features over the trusted within-class spread, on target train (CRA's alignment should "
            "shrink it).",
        )
    ]
    for name, m in mechanism.items():
        tables.append(
            ResultsTable(
                f"Per-class trusted coverage ({name}'s pseudo labels, target train)",
                ("class", "share of pixels", "trusted", "trusted precision", "on a class border"),
                [
                    (
                        class_name,
                        _percent(stats["pixel_share"]),
                        _percent(stats["trusted_share"]),
                        _percent(stats["trusted_precision"]),
                        _percent(stats["border_share"]),
                    )
                    for class_name, stats in m["per_class_regime"].items()
                ],
            )
        )
    return tables


def results_markdown(results: dict[str, Any]) -> str:
    """``results.md``: the tables of ``results_tables`` and the Fig.-3 panels."""
    lines = [
        "# Pipeline results",
        "",
        "mIoU (%) on target val. The oracle trains on target labels and is a reference only; the "
        "trusted-pixel figures use target-train ground truth in this report, never in training.",
    ]
    for table in results_tables(results):
        lines += ["", f"## {table.title}", ""]
        if table.lead:
            lines += [table.lead, ""]
        lines += ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    panels = [(name, row["panel"]) for name, row in results["methods"].items() if row.get("panel")]
    if panels:
        lines += ["", "## Fig. 3: image | CDA | trusted/untrusted | CDA + CRA | ground truth", ""]
        lines += [f"![{name}]({Path(path).name})" for name, path in panels]
    return "\n".join(lines) + "\n"


def _delta(before: float | None, after: float | None) -> str:
    return "–" if before is None or after is None else f"{after - before:+.2f}"
