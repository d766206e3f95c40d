"""Fault injection, interruptions: ``kill -9`` at random moments of each long command, a write
failure under ``RLIMIT_FSIZE``, and Ctrl-C (SIGINT). These run ``crossregion`` in child processes
(a signal or a file-size limit must hit a whole process); a rerun or ``--resume`` must give the
uninterrupted result bit for bit, and a stopped command must say, in one line, why and what next.
"""

from __future__ import annotations

import json
import random
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from faults import (
    SIGINT,
    SIGKILL,
    SIGTERM,
    cli_command,
    cli_environment,
    interrupt_when,
    judge,
    pseudo_label_argv,
    run_subprocess,
    tiny_training,
    tree_digest,
)

KILL_ITERATIONS = 12


@pytest.fixture(scope="module")
def kill_benchmark(tmp_path_factory) -> Path:
    """Enough target-train images (24) for pseudo-label to be killed mid-run."""
    from crossregion.synth.benchmark import generate_benchmark

    root = tmp_path_factory.mktemp("kill_benchmark")
    generate_benchmark(root, source_images=4, target_train_images=24, target_val_images=2, height=32, width=64, seed=0)
    return root


def train_argv(benchmark: Path, run: Path) -> list:
    return [
        "train",
        "--config",
        "demo_source_only",
        "--output",
        run,
        *tiny_training(benchmark, KILL_ITERATIONS),
        "engine.checkpoint_period=2",
    ]


SYNTH = [
    "--source-images",
    "10",
    "--target-train-images",
    "10",
    "--target-val-images",
    "10",
    "--height",
    "32",
    "--width",
    "64",
]


@pytest.fixture(scope="module")
def reference_run(kill_benchmark, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    status, output = run_subprocess(train_argv(kill_benchmark, run))
    assert status == 0, output
    return run


@pytest.fixture(scope="module")
def reference_store(kill_benchmark, reference_run, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("reference") / "store"
    status, output = run_subprocess(pseudo_label_argv(kill_benchmark, reference_run / "final.pth", store))
    assert status == 0, output
    return store


@pytest.fixture(scope="module")
def reference_synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "synth"
    status, output = run_subprocess(["data", "synth", out, *SYNTH])
    assert status == 0, output
    return out


def relative_digest(root: Path) -> dict[Path, str]:
    return {Path(path).relative_to(root): value for path, value in tree_digest(root).items()}


def metric_rows(run: Path) -> list[dict]:
    """metrics.jsonl without the timings, which differ between runs."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if key != "seconds_per_iter"} for row in rows]


def same_training(run: Path, reference: Path) -> bool:
    """Bit-identical final weights and the same metric rows, each once; no temp file left."""
    if not (run / "final.pth").exists():
        return False
    final = torch.load(run / "final.pth", weights_only=False)["models"]
    expected = torch.load(reference / "final.pth", weights_only=False)["models"]
    weights_equal = all(
        torch.equal(final[model][key], expected[model][key]) for model in expected for key in expected[model]
    )
    return weights_equal and metric_rows(run) == metric_rows(reference) and not list(run.glob(".*.tmp*"))


# ----------------------------------------------------------------------- kill -9 and rerun
# Random moments, drawn once (seeded) so that a failure can be replayed: the kill lands as soon as
# the run has written its k-th metrics row / image record / image file.
def kill_moments(seed: int, count: int, last: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(1, last + 1), count))


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def assert_killed(status: int, output: str) -> None:
    assert status == -SIGKILL, f"the kill did not land (status {status}), so nothing was tested:\n{output}"


@pytest.mark.parametrize(
    "moment", [*(f"after iteration {k}" for k in kill_moments(0, 3, KILL_ITERATIONS - 1)), "during a checkpoint write"]
)
def test_train_killed_then_resumed_equals_uninterrupted(moment, kill_benchmark, reference_run, tmp_path):
    run = tmp_path / "run"
    if moment.startswith("during"):
        ready = lambda: any(run.glob(".model_iter*.pth.tmp*"))  # noqa: E731
    else:
        ready = lambda: count_lines(run / "metrics.jsonl") >= int(moment.split()[-1])  # noqa: E731
    before = tree_digest(kill_benchmark)
    killed_status, killed_output = interrupt_when(
        train_argv(kill_benchmark, run), ready, sig=SIGKILL, delay=0.0, output=run
    )
    assert_killed(killed_status, killed_output)
    status, output = run_subprocess([*train_argv(kill_benchmark, run), "--resume"])
    judge(
        "kill -9 and rerun",
        f"train, kill {moment}",
        status=status,
        output=killed_output + output,
        expect_error=False,
        same_result=same_training(run, reference_run),
        inputs_before=before,
        inputs_after=tree_digest(kill_benchmark),
    )


@pytest.mark.parametrize("images_done", kill_moments(1, 3, 20))
def test_pseudo_label_killed_then_rerun_equals_uninterrupted(
    images_done, kill_benchmark, reference_run, reference_store, tmp_path
):
    store = tmp_path / "store"
    argv = pseudo_label_argv(kill_benchmark, reference_run / "final.pth", store)
    before = tree_digest(kill_benchmark, reference_run / "final.pth")
    killed_status, killed_output = interrupt_when(
        argv,
        lambda: len(list((store / "image_stats").rglob("*.json"))) >= images_done,
        sig=SIGKILL,
        delay=0.0,
        output=store,
    )
    assert_killed(killed_status, killed_output)
    status, output = run_subprocess(argv)
    judge(
        "kill -9 and rerun",
        f"pseudo-label, kill after image {images_done} of 24",
        status=status,
        output=killed_output + output,
        expect_error=False,
        same_result=relative_digest(store) == relative_digest(reference_store),
        inputs_before=before,
        inputs_after=tree_digest(kill_benchmark, reference_run / "final.pth"),
    )


@pytest.mark.parametrize("files_done", kill_moments(2, 3, 40))
def test_synth_killed_then_rerun_equals_uninterrupted(files_done, reference_synth, tmp_path):
    out = tmp_path / "synth"
    killed_status, killed_output = interrupt_when(
        ["data", "synth", out, *SYNTH],
        lambda: out.exists() and len(list(out.rglob("*.png"))) >= files_done,
        sig=SIGKILL,
        delay=0.0,
        output=out,
    )
    assert_killed(killed_status, killed_output)
    status, output = run_subprocess(["data", "synth", out, *SYNTH])
    judge(
        "kill -9 and rerun",
        f"data synth, kill after file {files_done} of 60",
        status=status,
        output=killed_output + output,
        expect_error=False,
        same_result=relative_digest(out) == relative_digest(reference_synth),
    )


# ----------------------------------------------------------------- write failure (RLIMIT_FSIZE)
def fsize_argv(command: str, benchmark: Path, run: Path, output: Path) -> list:
    checkpoint = run / "final.pth"
    return {
        "train": train_argv(benchmark, output),
        "pseudo-label": pseudo_label_argv(benchmark, checkpoint, output),
        # The default's worker processes: their shared-memory files count against the limit too.
        "pseudo-label --workers 2": [*pseudo_label_argv(benchmark, checkpoint, output), "--workers", "2"],
        "evaluate": [
            "evaluate",
            "--checkpoint",
            checkpoint,
            "--dataset",
            "cityscapes",
            "--root",
            benchmark / "cityscapes",
            "--output",
            output,
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
        "predict": [
            "predict",
            "--checkpoint",
            checkpoint,
            "--images",
            benchmark / "cityscapes" / "leftImg8bit" / "val",
            "--output",
            output,
            "--device",
            "cpu",
        ],
        "evaluate-predictions": [
            "evaluate-predictions",
            "--dataset",
            "cityscapes",
            "--root",
            benchmark / "cityscapes",
            "--predictions",
            benchmark / "cityscapes" / "gtFine" / "val",
            "--output",
            output,
            "--id-type=label",
        ],
        "data synth": ["data", "synth", output, *SYNTH],
        "export-checkpoint": ["export-checkpoint", checkpoint, "--output", output / "official.pth"],
    }[command]


# 64 bytes, not 0: Python's tempfile (which torch calls on import) probes with a 4-byte write, and
# no program that imports torch starts under a limit of 0.
FIRST_FILE = 64
FSIZE_CASES = [  # (command, limit in bytes, what fails)
    ("train", FIRST_FILE, "config.yaml"),
    ("train", 1 << 20, "the first checkpoint"),
    ("pseudo-label", FIRST_FILE, "manifest.json"),
    ("pseudo-label", 1000, "the first entropy PNG"),
    ("pseudo-label --workers 2", 1000, "the first entropy PNG"),
    ("evaluate", FIRST_FILE, "metrics.json"),
    ("predict", FIRST_FILE, "the first PNG"),
    ("evaluate-predictions", FIRST_FILE, "metrics.json"),
    ("data synth", FIRST_FILE, "the running marker"),
    ("data synth", 2000, "the first image"),
    ("export-checkpoint", FIRST_FILE, "the checkpoint"),
]


@pytest.mark.parametrize("command, limit, what", FSIZE_CASES, ids=[f"{c}: {w}" for c, _, w in FSIZE_CASES])
def test_write_failure_names_the_file_and_the_cause(command, limit, what, kill_benchmark, reference_run, tmp_path):
    output = tmp_path / "out"
    inputs = (kill_benchmark, reference_run / "final.pth")
    before = tree_digest(*inputs)
    status, text = run_subprocess(fsize_argv(command, kill_benchmark, reference_run, output), file_size_limit=limit)
    judge(
        "write failure (RLIMIT_FSIZE)",
        f"{command}: {what}",
        status=status,
        output=text,
        named=[f"cannot write {output}", "file too large"],
        inputs_before=before,
        inputs_after=tree_digest(*inputs),
    )
    assert not list(output.rglob(".*.tmp*")), "a temp file was left behind"


# ------------------------------------------------------------------------------ Ctrl-C (SIGINT)
def test_ctrl_c_in_training_says_how_to_resume_and_resume_equals_uninterrupted(kill_benchmark, reference_run, tmp_path):
    run = tmp_path / "run"
    before = tree_digest(kill_benchmark)
    status, output = interrupt_when(
        train_argv(kill_benchmark, run), lambda: (run / "metrics.jsonl").exists(), sig=SIGINT, delay=0.5, output=run
    )
    last_line = output.strip().splitlines()[-1]
    resume = shlex.split(last_line.split("with: ", 1)[-1])
    resumed_status, resumed_output = run_subprocess(resume[1:]) if resume[0] == "crossregion" else (1, last_line)
    judge(
        "Ctrl-C (SIGINT)",
        "train, then the printed --resume command",
        status=resumed_status,
        output=output + resumed_output,
        expect_error=False,
        same_result=status == 130 and "--resume" in resume and same_training(run, reference_run),
        inputs_before=before,
        inputs_after=tree_digest(kill_benchmark),
    )


@pytest.mark.parametrize("command", ["pseudo-label", "data synth", "predict"])
def test_ctrl_c_ends_with_one_line_and_a_rerun_completes(
    command, kill_benchmark, reference_run, reference_store, reference_synth, tmp_path
):
    output = tmp_path / "out"
    argv = fsize_argv(command, kill_benchmark, reference_run, output)
    if command == "predict":  # 24 images, so the signal lands mid-run
        argv[argv.index("--images") + 1] = kill_benchmark / "cityscapes" / "leftImg8bit" / "train"
    inputs = (kill_benchmark, reference_run / "final.pth")
    before = tree_digest(*inputs)
    status, text = interrupt_when(
        argv, lambda: output.exists() and any(output.rglob("*.png")), sig=SIGINT, delay=0.0, output=output
    )
    rerun_status, rerun_text = run_subprocess(argv)
    reference = {"pseudo-label": reference_store, "data synth": reference_synth}.get(command)
    same = rerun_status == 0 and (reference is None or relative_digest(output) == relative_digest(reference))
    judge(
        "Ctrl-C (SIGINT)",
        f"{command}, then the same command again",
        status=rerun_status,
        output=text + rerun_text,
        expect_error=False,
        same_result=status == 130 and "crossregion: interrupted; rerun the same command" in text and same,
        inputs_before=before,
        inputs_after=tree_digest(*inputs),
    )


# ----------------------------------------------------------------------------------- SIGTERM
def test_sigterm_in_training_says_how_to_resume_and_resume_equals_uninterrupted(
    kill_benchmark, reference_run, tmp_path
):
    run = tmp_path / "run"
    before = tree_digest(kill_benchmark)
    status, output = interrupt_when(
        train_argv(kill_benchmark, run), lambda: (run / "metrics.jsonl").exists(), sig=SIGTERM, delay=0.5, output=run
    )
    last_line = output.strip().splitlines()[-1]
    resume = shlex.split(last_line.split("with: ", 1)[-1])
    resumed_status, resumed_output = run_subprocess(resume[1:]) if resume[0] == "crossregion" else (1, last_line)
    judge(
        "SIGTERM",
        "train, then the printed --resume command",
        status=resumed_status,
        output=output + resumed_output,
        expect_error=False,
        same_result=status == 128 + SIGTERM
        and "terminated (SIGTERM)" in last_line
        and "--resume" in resume
        and same_training(run, reference_run),
        inputs_before=before,
        inputs_after=tree_digest(kill_benchmark),
    )


def test_sigterm_in_pseudo_label_ends_with_one_line_and_a_rerun_completes(
    kill_benchmark, reference_run, reference_store, tmp_path
):
    store = tmp_path / "store"
    argv = pseudo_label_argv(kill_benchmark, reference_run / "final.pth", store)
    inputs = (kill_benchmark, reference_run / "final.pth")
    before = tree_digest(*inputs)
    status, text = interrupt_when(
        argv, lambda: store.exists() and any(store.rglob("*.png")), sig=SIGTERM, delay=0.0, output=store
    )
    rerun_status, rerun_text = run_subprocess(argv)
    judge(
        "SIGTERM",
        "pseudo-label, then the same command again",
        status=rerun_status,
        output=text + rerun_text,
        expect_error=False,
        same_result=status == 128 + SIGTERM
        and "crossregion: terminated (SIGTERM); rerun the same command" in text
        and relative_digest(store) == relative_digest(reference_store),
        inputs_before=before,
        inputs_after=tree_digest(*inputs),
    )


# ---------------------------------------------------------------------- concurrent writers
@pytest.mark.parametrize("second", ["train", "train --resume"])
def test_a_second_training_process_on_a_run_folder_is_refused(second, kill_benchmark, reference_run, tmp_path):
    """Two real processes: the first is held still mid-run (it holds the folder) while the second
    starts; the second must be refused and the first must end at the uninterrupted result."""
    run = tmp_path / "run"
    first = subprocess.Popen(
        cli_command(train_argv(kill_benchmark, run)),
        env=cli_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while count_lines(run / "metrics.jsonl") < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert first.poll() is None, "the first run ended before the second could start"
    argv = [*train_argv(kill_benchmark, run), *(["--resume"] if "resume" in second else [])]
    first.send_signal(signal.SIGSTOP)
    try:
        status, output = run_subprocess(argv)
    finally:
        first.send_signal(signal.SIGCONT)
    first_output, _ = first.communicate(timeout=300)
    judge(
        "concurrent writers",
        f"{second} while another train writes the folder",
        status=status,
        output=output,
        named=[str(run), f"PID {first.pid}"],
        harm=first.returncode != 0 or not same_training(run, reference_run),
    )


# --------------------------------------------------------- malicious and incomplete checkpoints
def test_resume_without_last_pth_continues_from_the_newest_checkpoint(kill_benchmark, reference_run, tmp_path):
    run = tmp_path / "run"
    killed_status, killed_output = interrupt_when(
        train_argv(kill_benchmark, run),
        lambda: count_lines(run / "metrics.jsonl") >= 7,
        sig=SIGKILL,
        delay=0.0,
        output=run,
    )
    assert_killed(killed_status, killed_output)
    (run / "last.pth").unlink()
    newest = max(run.glob("model_iter*.pth"))
    status, output = run_subprocess([*train_argv(kill_benchmark, run), "--resume"])
    resumed_at = int(newest.stem.removeprefix("model_iter"))
    judge(
        "malicious and incomplete checkpoints",
        "train --resume: last.pth gone, model_iter*.pth there",
        status=status,
        output=killed_output + output,
        expect_error=False,
        same_result=f"resumed at iteration {resumed_at}" in output and same_training(run, reference_run),
    )
