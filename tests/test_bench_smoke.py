"""Every benchmark script under bench/ runs in its smoke mode, as docs/benchmarks.md gives it.

The scripts are what a lent GPU or a long CPU run executes first; a broken one costs the whole
run. Each runs here as a user runs it, in a subprocess from the repository root, on tiny sizes,
and must exit 0 with its headline (the last line of its output, the line the docs quote).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(command: list[str], env: dict[str, str] | None = None) -> str:
    """Runs ``command`` from the repository root; returns stdout, failing with its output if rc != 0."""
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def headline(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output"
    return lines[-1]


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the scripts that share the benchmark's cached stages (trained once, reused)."""
    return tmp_path_factory.mktemp("bench")


@pytest.mark.parametrize(
    ("script", "arguments", "prefix"),
    [
        ("cra_step.py", ["--quick"], "cra_step speedup resnet18"),
        ("method_steps.py", ["--quick"], "headline: s/iter"),
        ("inference_speed.py", ["--quick"], "inference img/s"),
        ("pseudo_label_store.py", ["--images", "1"], "HEADLINE:"),
        ("synth_speed.py", ["--images", "4", "--height", "32", "--width", "64"], "synth_speed"),
    ],
)
def test_speed_script_smoke(script: str, arguments: list[str], prefix: str) -> None:
    line = headline(run_script([sys.executable, f"bench/{script}", *arguments]))
    assert line.startswith(prefix), line


@pytest.mark.parametrize(
    ("script", "prefix"),
    [
        ("accuracy.py", "accuracy CRA Δ"),
        ("cra_ablations.py", "cra_ablations best mean"),
        ("cra_diagnosis.py", "cra_diagnosis:"),
        ("regime.py", "regime "),
        ("selection.py", "selection best pooled ρ"),
    ],
)
def test_accuracy_script_smoke(script: str, prefix: str, bench_output: Path) -> None:
    command = [sys.executable, f"bench/{script}", "--quick", "--output", str(bench_output), "--seeds", "0"]
    line = headline(run_script(command))
    assert line.startswith(prefix), line


def test_accuracy_runs_methods_without_the_baselines_method(bench_output: Path) -> None:
    """``--methods`` without FADA (the Table-3 baselines' method) runs those methods without the baselines."""
    command = [sys.executable, "bench/accuracy.py", "--quick", "--output", str(bench_output), "--seeds", "0"]
    line = headline(run_script([*command, "--methods", "adaptsegnet"]))
    assert line.startswith("accuracy CRA Δ adaptsegnet"), line
    assert "fada" not in line, line


def test_demo_speed_smoke(bench_output: Path) -> None:
    line = headline(run_script([sys.executable, "bench/demo_speed.py", "--quick", "--output", str(bench_output)]))
    assert line.startswith("demo_speed loading"), line


def test_alignment_scale_smoke(tmp_path: Path) -> None:
    stdout = run_script([sys.executable, "bench/alignment_scale.py", "--quick", "--workdir", str(tmp_path)])
    assert headline(stdout).startswith("alignment_scale ratio cra")


def test_synth_samples_smoke(tmp_path: Path) -> None:
    image = tmp_path / "samples.png"
    run_script([sys.executable, "bench/synth_samples.py", "--out", str(image), "--height", "32", "--width", "64"])
    assert image.stat().st_size > 0


def test_gpu_script_on_cpu(tmp_path: Path) -> None:
    """The one script to run when a GPU is lent: it must pass from a bare checkout (no install of
    crossregion; PYTHON names an interpreter with torch, as on the lent machine)."""
    line = headline(
        run_script(
            ["bash", "bench/gpu.sh", "--device", "cpu", "--tiny"], env={"OUT": str(tmp_path), "PYTHON": sys.executable}
        )
    )
    assert line.startswith("gpu check: fp32 cra_step speedup"), line
    assert (tmp_path / "cra_step_fp32.json").exists()
