#!/usr/bin/env bash
# GPU benchmark, one command on a machine with an NVIDIA GPU, < 8 minutes:
#   (a) the `full` preset's training slices/s through the Trainer's input pipeline against a bare
#       `model.fit` on arrays, float32 and mixed_float16, each with jit_compile off and on, plus the
#       rate of the input pipeline alone (bench/train.py);
#   (b) `ctseg run --preset full` on the default phantom: wall time, Trainer slices/s per epoch, Dice;
#   (c) ingest on the node's cores (bench/ingest.py, output 256 px): IrcadExampleGen against the seed's
#       tf.data path and the bare pydicom read, wall rates and CPU per slice pair.
# Results go under $CTSEG_BENCH_OUT (default out/bench-gpu): train.json, run.log, ingest.json, summary.json.
#
#   bash bench/gpu.sh
#
# TensorFlow 2.15 needs CUDA 12.2 and cuDNN 8.9 (the Dockerfile's base image has both; on a bare
# machine `uv pip install --python .venv/bin/python "tensorflow[and-cuda]==2.15.1"`). Without a
# visible GPU the script stops, unless CTSEG_BENCH_ALLOW_CPU=1 (the test that keeps it from rotting
# runs it that way with tiny sizes through the variables below).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
CTSEG=${CTSEG:-.venv/bin/ctseg}
OUT=${CTSEG_BENCH_OUT:-out/bench-gpu}
PRESET=${CTSEG_BENCH_PRESET:-full}
CONFIG=${CTSEG_BENCH_CONFIG:-"{}"}                # more custom_config for (a), JSON
PATIENTS=${CTSEG_BENCH_PATIENTS:-4}               # (a)'s phantom: patients x slices at PHANTOM_SIZE px
SLICES=${CTSEG_BENCH_SLICES:-40}
PHANTOM_SIZE=${CTSEG_BENCH_PHANTOM_SIZE:-512}
STEPS=${CTSEG_BENCH_STEPS:-60}                    # batches per measured round
ROUNDS=${CTSEG_BENCH_ROUNDS:-5}
PRECISIONS=${CTSEG_BENCH_PRECISIONS:-float32,mixed_float16}
JIT=${CTSEG_BENCH_JIT:-off,on}
RUN_ARGS=${CTSEG_BENCH_RUN_ARGS:-}                # more `ctseg run` arguments for (b)
TRAIN_TIMEOUT_S=${CTSEG_BENCH_TRAIN_TIMEOUT_S:-270}
RUN_TIMEOUT_S=${CTSEG_BENCH_RUN_TIMEOUT_S:-330}
INGEST_ARGS=${CTSEG_BENCH_INGEST_ARGS:-"--patients 6 --slices 30 --repeat 2"}   # (c)
INGEST_TIMEOUT_S=${CTSEG_BENCH_INGEST_TIMEOUT_S:-240}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

gpus=$("$PY" -c "from ctseg.quiet import silence; silence(False)
import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null | tail -1)
echo "GPUs visible to TensorFlow: $gpus"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi") > "$OUT/devices.txt" 2>&1
if [ "$gpus" = "0" ] && [ "${CTSEG_BENCH_ALLOW_CPU:-0}" != "1" ]; then
  echo "no GPU visible to TensorFlow (see $OUT/devices.txt; TF 2.15 needs CUDA 12.2 + cuDNN 8.9); set CTSEG_BENCH_ALLOW_CPU=1 to run on CPU anyway" >&2
  exit 2
fi

echo "(a) training throughput: preset $PRESET, precisions $PRECISIONS, jit_compile $JIT"
timeout "$TRAIN_TIMEOUT_S" "$PY" -m bench.train --preset "$PRESET" --config "$CONFIG" \
  --patients "$PATIENTS" --slices "$SLICES" --phantom-size "$PHANTOM_SIZE" --steps "$STEPS" --rounds "$ROUNDS" \
  --precision "$PRECISIONS" --jit-compile "$JIT" --workdir "$OUT/train-work" --out "$OUT/train.json" \
  > "$OUT/train.log" 2>&1 || { echo "bench.train failed, see $OUT/train.log" >&2; tail -20 "$OUT/train.log" >&2; exit 1; }

echo "(b) ctseg run --preset $PRESET $RUN_ARGS"
run_started=$SECONDS
# shellcheck disable=SC2086  # RUN_ARGS is a list of arguments
timeout "$RUN_TIMEOUT_S" "$CTSEG" run --preset "$PRESET" --workdir "$OUT/run" --no-cache $RUN_ARGS > "$OUT/run.log" 2>&1 \
  || { echo "ctseg run failed, see $OUT/run.log" >&2; tail -30 "$OUT/run.log" >&2; exit 1; }
run_s=$(( SECONDS - run_started ))

echo "(c) ingest: bench.ingest $INGEST_ARGS"
# shellcheck disable=SC2086  # INGEST_ARGS is a list of arguments
timeout "$INGEST_TIMEOUT_S" "$PY" -m bench.ingest $INGEST_ARGS --out "$OUT/ingest.json" > "$OUT/ingest.log" 2>&1 \
  || { echo "bench.ingest failed, see $OUT/ingest.log" >&2; tail -20 "$OUT/ingest.log" >&2; exit 1; }

"$PY" - "$OUT" "$run_s" "$SECONDS" <<'PY'
import json, re, sys
from pathlib import Path
out, run_s, total_s = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
log = (out / "run.log").read_text()
metrics = max((out / "run").glob("pipeline/**/metrics.json"), key=lambda p: p.stat().st_mtime)
evaluation = json.loads(metrics.read_text())
train = json.loads((out / "train.json").read_text())
summary = {
    "devices": (out / "devices.txt").read_text().strip(),
    "train": {k: train[k] for k in ("preset", "image_size", "batch_size", "devices", "strategy", "parameters",
                                    "gflops_per_slice_forward", "pipeline_alone")},
    "train_variants": [{k: v[k] for k in ("precision", "jit_compile", "slices_per_second", "ratio_pipeline_to_arrays",
                                          "cpu_ms_per_slice", "warm_up_s")} for v in train["variants"]],
    "run": {"wall_s": round(run_s, 1),
            "trainer": re.findall(r"training on .*", log),
            "epoch_slices_per_second": [float(r) for r in re.findall(r"epoch \d+: ([\d.]+) training slices/s", log)],
            "mean_patient_dice": evaluation["mean_patient_dice"], "blessed": evaluation.get("blessed"),
            "dice_per_patient": {p["patient_id"]: p["dice"] for p in evaluation.get("patients", [])}},
    "ingest": json.loads((out / "ingest.json").read_text()),
    "total_s": total_s}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
PY
