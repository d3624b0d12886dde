"""bench/gpu.sh, the GPU benchmark, run on CPU with tiny sizes so that it cannot rot
before a session with a GPU runs it for real (docs/BENCHMARKS.md says how)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"


def _env(out: Path, **extra) -> dict:
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "PY": sys.executable, "CTSEG": str(bin_dir / "ctseg"), "CTSEG_BENCH_OUT": str(out), **extra}


def test_gpu_bench_refuses_to_pass_cpu_figures_off_as_gpu_ones(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT)], env=_env(tmp_path / "out"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no GPU visible to TensorFlow" in done.stderr and "CTSEG_BENCH_ALLOW_CPU=1" in done.stderr
    assert not (tmp_path / "out" / "train.json").exists()


@pytest.mark.slow
def test_gpu_bench_runs_end_to_end_on_cpu_with_tiny_sizes(tmp_path):
    """One variant (mixed_float16 with XLA, both off their CPU defaults) and a one-epoch `ctseg run`."""
    out = tmp_path / "out"
    env = _env(out, CTSEG_BENCH_ALLOW_CPU="1", CTSEG_BENCH_PATIENTS="3", CTSEG_BENCH_SLICES="8",
               CTSEG_BENCH_PHANTOM_SIZE="64", CTSEG_BENCH_STEPS="2", CTSEG_BENCH_ROUNDS="1",
               CTSEG_BENCH_CONFIG=json.dumps({"image_size": 32, "depth": 2, "base_filters": 4, "batch_size": 4}),
               CTSEG_BENCH_PRECISIONS="mixed_float16", CTSEG_BENCH_JIT="on",
               CTSEG_BENCH_RUN_ARGS="--image-size 32 --epochs 1 --phantom-patients 4 --phantom-slices 8",
               CTSEG_BENCH_INGEST_ARGS="--patients 2 --slices 3 --size 64 --image-size 32 --repeat 1",
               CTSEG_BENCH_TRAIN_TIMEOUT_S="600", CTSEG_BENCH_RUN_TIMEOUT_S="800", CTSEG_BENCH_INGEST_TIMEOUT_S="400")
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["preset"] == "full" and summary["train"]["image_size"] == 32
    assert summary["train"]["pipeline_alone"]["slices_per_cpu_second"] > 0
    [variant] = summary["train_variants"]
    assert (variant["precision"], variant["jit_compile"]) == ("mixed_float16", True)
    assert variant["slices_per_second"]["pipeline"] > 0 and variant["slices_per_second"]["arrays"] > 0
    assert variant["ratio_pipeline_to_arrays"] > 0
    run = summary["run"]
    assert run["wall_s"] > 0 and len(run["epoch_slices_per_second"]) == 1 and run["epoch_slices_per_second"][0] > 0
    assert len(run["trainer"]) == 1 and "policy float32" in run["trainer"][0] and "no GPU found" in run["trainer"][0]
    assert 0.0 <= run["mean_patient_dice"] <= 1.0 and run["dice_per_patient"]
    ingest = summary["ingest"]
    assert ingest["pairs"][1] > ingest["pairs"][0] > 0
    zipped = ingest["rates"]["IrcadExampleGen, 3Dircadb1.zip"]
    # CPU a pair end to end is positive; the marginal one is a difference of two tiny runs, any sign at this size
    assert zipped["cpu_ms_end_to_end"] > 0 and math.isfinite(zipped["cpu_ms_marginal"])
