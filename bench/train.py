"""Training throughput: the Trainer's input pipeline against a bare `model.fit` on arrays in memory.

Same model, same slices, one process; the two are measured in alternating rounds (after a warm-up
of each) so that load from other processes hits both alike; the ratio is the median of the rounds' ratios.
The ratio pipeline/arrays tells whether the input pipeline (parsing, balancing, batching) is the
bottleneck: both train the same model, whose train step augments each batch; "arrays, no augmentation"
trains the same network without it, so arrays against it is what augmenting in the step costs.
"Pipeline alone" (iterating the dataset with no model) is the rate the CPU side can feed, also per
CPU second (per core).
Each `--precision` x `--jit-compile` variant builds and compiles a fresh model under the Trainer's
distribution strategy (MirroredStrategy over every GPU, or the default strategy on CPU).

    .venv/bin/python -m bench.train [--preset small] [--patients 4] [--slices 40] [--steps 15] [--rounds 6]
        [--precision auto|float32,mixed_float16] [--jit-compile off|off,on] [--pipeline-only] [--out result.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ctseg.cpu_kernels import prefer_onednn  # noqa: E402
from ctseg.quiet import silence  # noqa: E402

silence(False)
prefer_onednn()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ctseg.models.unet import data, trainer  # noqa: E402
from ctseg.models.unet.config import UnetConfig  # noqa: E402
from ctseg.models.unet.model import build_unet, compile_model, flops_per_slice  # noqa: E402
from ctseg.phantom import write_phantom  # noqa: E402
from ctseg.pipeline.local_runner import run_ingest  # noqa: E402


def _measure(fit, slices: int) -> tuple[float, float]:
    """Slices per second of wall time, and CPU milliseconds per slice of this process (robust to other load)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fit()
    return slices / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / slices


def _variant(config: UnetConfig, strategy, precision: str, jit_compile: bool, pipeline, hu, mask, args) -> dict:
    """One model under `precision` and `jit_compile`: pipeline vs arrays in alternating rounds."""
    tf.keras.mixed_precision.set_global_policy(precision)
    config = dataclasses.replace(config, jit_compile=jit_compile)
    batch_size = config.batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        model = trainer._build_model(config)
    slices = args.steps * batch_size

    def fit_pipeline():
        model.fit(pipeline, epochs=1, steps_per_epoch=args.steps, verbose=0)

    def fit_arrays(on=model):
        on.fit(hu, mask, batch_size=batch_size, epochs=1, steps_per_epoch=args.steps, shuffle=True, verbose=0)

    with strategy.scope():  # the same network without the train step's augmentation: what augmenting costs
        plain = compile_model(build_unet(config), config)

    started = time.perf_counter()
    fit_pipeline(), fit_arrays(), fit_arrays(plain)  # warm-up: tracing (XLA compilation), the pipeline's cache
    warm_up_s = time.perf_counter() - started
    rates, cpu_ms = {"pipeline": [], "arrays": [], "arrays_no_augmentation": []}, {
        "pipeline": [], "arrays": [], "arrays_no_augmentation": []}
    for _ in range(args.rounds):
        for name, fit in (("pipeline", fit_pipeline), ("arrays", fit_arrays),
                          ("arrays_no_augmentation", lambda: fit_arrays(plain))):
            rate, ms = _measure(fit, slices)
            rates[name].append(rate)
            cpu_ms[name].append(ms)
    return {
        "precision": precision, "jit_compile": jit_compile, "warm_up_s": round(warm_up_s, 1),
        "slices_per_second": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        "rounds": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "cpu_ms_per_slice": {k: round(statistics.median(v), 2) for k, v in cpu_ms.items()},
        "ratio_pipeline_to_arrays": round(statistics.median(
            p / a for p, a in zip(rates["pipeline"], rates["arrays"])), 3),
        "parameters": int(model.count_params())}


def _pipeline_alone(pipeline, steps: int, batch_size: int, rounds: int) -> dict:
    """Iterating the training dataset with no model, what the CPU side can feed: median slices/s of wall
    time, and slices per CPU second of this process (every tf.data thread), i.e. per core."""
    iterator = iter(pipeline)
    next(iterator)

    def drain():
        for _ in range(steps):
            next(iterator)

    rates, cpu_ms = zip(*(_measure(drain, steps * batch_size) for _ in range(rounds)))
    return {"slices_per_second": round(statistics.median(rates), 1),
            "slices_per_cpu_second": round(1000 / statistics.median(cpu_ms), 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--config", default="{}", help="more custom_config as JSON")
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--phantom-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=15, help="batches per measured round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--precision", default="auto",
                    help="comma-separated Keras policies; auto = what the Trainer picks (mixed_float16 on GPU)")
    ap.add_argument("--jit-compile", default="config", help="comma-separated off/on; config = the custom_config's")
    ap.add_argument("--workdir", default="/tmp/ctseg-bench-train")
    ap.add_argument("--pipeline-only", action="store_true", help="only the input pipeline's own rate (no model)")
    ap.add_argument("--out", help="also write the result JSON here")
    args = ap.parse_args(argv)
    config = UnetConfig.from_custom_config({"preset": args.preset, **json.loads(args.config)})
    work = Path(args.workdir)
    phantom = work / f"phantom-{args.patients}x{args.slices}-{args.phantom_size}"
    if not phantom.exists():
        write_phantom(phantom, patients=args.patients, slices=args.slices, size=args.phantom_size, seed=0)
    pattern = run_ingest(data_root=phantom, workdir=work / f"ingest-{phantom.name}-{config.image_size}",
                         image_size=config.image_size)["train"]

    strategy = trainer.distribution_strategy()
    precisions = ([tf.keras.mixed_precision.global_policy().name] if args.precision == "auto"
                  else args.precision.split(","))
    jits = ([config.jit_compile] if args.jit_compile == "config"
            else [{"on": True, "off": False}[j] for j in args.jit_compile.split(",")])
    batch_size = config.batch_size * strategy.num_replicas_in_sync
    pipeline = trainer._input_fn([pattern], config, batch_size, training=True)
    hu, mask, patients = data.read_patients(pattern, config.image_size)
    if config.context_slices:  # the same (H, W, 2k+1) stacks the pipeline builds
        hu = hu[data.neighbour_table(patients, config.context_slices)].transpose(0, 2, 3, 1)
    hu, mask = hu.astype(np.float32), mask.astype(np.float32)
    repeats = -(-args.steps * batch_size // hu.shape[0])  # enough rows for every measured step: no early end of data
    hu_rows, mask_rows = np.tile(hu, (repeats,) + (1,) * (hu.ndim - 1)), np.tile(mask, (repeats, 1, 1))
    variants = [] if args.pipeline_only else [
        _variant(config, strategy, p, j, pipeline, hu_rows, mask_rows, args) for p in precisions for j in jits]
    tf.keras.mixed_precision.set_global_policy("float32")
    flops_model = build_unet(config)
    result = {
        "preset": config.preset, "image_size": config.image_size, "depth": config.depth,
        "base_filters": config.base_filters, "batch_size": batch_size,
        "devices": [d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU"],
        "strategy": type(strategy).__name__, "train_slices_in_memory": int(hu.shape[0]),
        "parameters": int(flops_model.count_params()),
        "gflops_per_slice_forward": round(flops_per_slice(flops_model) / 1e9, 3),
        "pipeline_alone": _pipeline_alone(pipeline, args.steps, batch_size, args.rounds),
        "variants": variants,
        "load_average": [round(x, 2) for x in os.getloadavg()]}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
