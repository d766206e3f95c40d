"""``crossregion report``: the HTML page of a tiny pipeline run, checked as HTML and, where
Chromium is installed, rendered in a headless browser."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pipeline import benchmark, write_config  # noqa: F401 (benchmark is a fixture)

from crossregion.app.pipeline.config import load_pipeline_config
from crossregion.app.pipeline.run import run_pipeline
from crossregion.app.report import SECTIONS, write_report
from crossregion.app.report.runs import differing_keys, load_run
from crossregion.cli import main as cli_main

PNG_URI_PREFIX = "data:image/png;base64,"
CHROMIUM = shutil.which("chromium")


class PageParser(HTMLParser):
    """Collects the section ids, image sources, headings and every external reference of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.section_ids: list[str] = []
        self.image_sources: list[str] = []
        self.headings: list[str] = []
        self.external: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "section":
            self.section_ids.append(attributes.get("id"))
        if tag == "img":
            self.image_sources.append(attributes["src"])
        for name in ("src", "href"):
            value = attributes.get(name) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)
        self._in_heading = tag in ("h2", "h3")

    def handle_endtag(self, tag):
        self._in_heading = False

    def handle_data(self, data):
        if self._in_heading and data.strip():
            self.headings.append(data.strip())


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, benchmark) -> tuple[Path, Path]:  # noqa: F811
    """(pipeline config, run folder) of the tiny pipeline of test_pipeline."""
    folder = tmp_path_factory.mktemp("report")
    config_path = write_config(folder, benchmark)
    run_pipeline(load_pipeline_config(str(config_path)), folder / "run")
    return config_path, folder / "run"


@pytest.fixture(scope="module")
def report(pipeline_run) -> Path:
    _, run = pipeline_run
    return write_report([run], run.parent / "report.html")


def test_report_of_a_pipeline_holds_every_section_and_embeds_every_image(report):
    page = parse(report)
    assert page.section_ids == list(SECTIONS)
    assert page.external == []
    for heading in (
        "Regime",
        "Table 1: CRA after each CDA method",
        "Table 3: CRA against the baselines on the same pseudo labels",
        "run · so",
    ):
        assert heading in page.headings
    # Per-class IoU, training curves, Fig.-3 panel, entropy histogram, trusted fraction per class.
    assert len(page.image_sources) == 5
    for source in page.image_sources:
        assert source.startswith(PNG_URI_PREFIX)
        with Image.open(io.BytesIO(base64.b64decode(source.removeprefix(PNG_URI_PREFIX)))) as image:
            assert image.format == "PNG"
            assert image.width > 100 and image.height > 50
    text = report.read_text(encoding="utf-8")
    assert "loss/seg_src" in text and "lr/segmenter" in text
    assert "03_cra_so/config.yaml" in text
    assert "not recorded" not in text  # every pipeline stage records its wall time and machine


def test_report_compares_runs_by_the_keys_they_differ_in(pipeline_run, tmp_path):
    _, run = pipeline_run
    source, cra = run / "00_source", run / "03_cra_so"  # stage folders are training runs too
    differences = dict(differing_keys([load_run(source, "source"), load_run(cra, "cra")]))
    assert differences["model.init_checkpoint"][0] != differences["model.init_checkpoint"][1]
    assert "optim.lr" not in differences

    output = write_report([run, source, cra], tmp_path / "compare.html")
    page = parse(output)
    assert "Keys in which the runs differ" in page.headings
    assert all(source.startswith(PNG_URI_PREFIX) for source in page.image_sources)
    assert {"run", "00_source", "03_cra_so"} <= set(page.headings)  # each run's configs


def test_missing_or_unrecognised_run_folders_fail_with_their_path(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_report([tmp_path / "nowhere"], tmp_path / "report.html")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["report", str(empty), "--output", str(tmp_path / "report.html")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("crossregion: error:") and str(empty) in error and "\n" not in error
    assert not (tmp_path / "report.html").exists()


def test_without_matplotlib_the_command_says_what_to_install(pipeline_run, tmp_path):
    _, run = pipeline_run
    # A fresh interpreter in which ``import matplotlib`` fails, as where it is not installed.
    script = (
        "import sys; sys.modules['matplotlib'] = None; from crossregion.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, "report", str(run), "--output", str(tmp_path / "report.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert (
        completed.stderr.strip() == "crossregion: error: the report needs matplotlib: pip install 'crossregion[report]'"
    )
    assert not (tmp_path / "report.html").exists()


def test_pipeline_command_ends_by_writing_the_report(pipeline_run, capsys):
    config_path, run = pipeline_run
    (run / "report.html").unlink(missing_ok=True)
    assert cli_main(["pipeline", "--config", str(config_path), "--output", str(run)]) == 0  # every stage skipped
    assert f"report: {run / 'report.html'}" in capsys.readouterr().out
    assert parse(run / "report.html").section_ids == list(SECTIONS)


def test_report_renders_in_a_headless_browser_without_console_messages(report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    screenshot = tmp_path / "report.png"
    completed = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={screenshot}",
            "--window-size=1400,3000",
            report.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    # Chromium logs every console message (errors, uncaught exceptions) as an INFO:CONSOLE line.
    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 100  # text, tables and charts, not a blank page
