"""Docs and comments point only at files the repository has.

Every path-like reference to a repository file (``docs/spec.md``, ``methods/base.py``,
``configs/pipelines/demo.yaml``, ``bench/accuracy.py``) in the Markdown docs and in the Python
sources must name a file that exists, relative to the repository root, the package, the docs or
the referring file's folder. Generated folders (runs, data, out) and URLs are not references.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "crossregion"
REFERENCE = re.compile(r"(?<![\w/.$-])((?:[\w-]+/)+[\w.-]+\.(?:md|py|yaml|sh|html|json))\b")
# Not repository files: what a run writes (run folders, stage folders, benchmark outputs),
# placeholders, and the official projects' files the spec cites (cityscapesScripts' helpers,
# AdaptSegNet's model/, CRA's and IAST's configs, ProDA's models/).
NOT_REPOSITORY = re.compile(
    r"^(runs|data|out|tmp|OUT|RUN_DIR|STORE|DIR|run_dir|folder|pretrained|image_stats|entropy|labels|eval|"
    r"0\d_|bench/out/|helpers/|model/|core/|code/|sl_\d|configs/deeplabv2_|models/adaptation|"
    r"models/deeplabv2.py$)"
)


def documents() -> list[Path]:
    sources = [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *PACKAGE.rglob("*.py")]
    return [*sources, *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]


def broken_references(text: str, folder: Path) -> list[str]:
    """The references in ``text`` (of a file in ``folder``) that name no repository file."""
    broken = []
    for match in REFERENCE.finditer(text):
        reference = match.group(1)
        if NOT_REPOSITORY.match(reference) or "://" in text[max(0, match.start() - 40) : match.start()]:
            continue
        if not any((base / reference).exists() for base in (ROOT, PACKAGE, ROOT / "docs", folder)):
            broken.append(reference)
    return broken


def test_every_referenced_file_exists():
    broken = [
        f"{path.relative_to(ROOT)}: {reference}"
        for path in documents()
        if path != Path(__file__).resolve()
        for reference in broken_references(path.read_text(encoding="utf-8"), path.parent)
    ]
    assert not broken, "references to files the repository lacks:\n" + "\n".join(broken)


def test_the_check_finds_a_missing_file(tmp_path):
    text = "see docs/spec.md, methods/base.py and docs/nowhere.md; runs/demo/results.md is output\n"
    assert broken_references(text, tmp_path) == ["docs/nowhere.md"]
