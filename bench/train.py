"""Training throughput: the Trainer's input pipeline against a bare `model.fit` on arrays in memory.

Same model, same slices, one process; the two are measured in alternating rounds (after a warm-up
of each) so that load from other processes hits both alike; the ratio is the median of the rounds' ratios.
The ratio pipeline/arrays tells whether
the input pipeline (parsing, balancing, augmentation) is the bottleneck.

    .venv/bin/python bench/train.py [--preset small] [--patients 4] [--slices 40] [--steps 15] [--rounds 6]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ctseg.quiet import silence  # noqa: E402

silence(False)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ctseg.phantom import write_phantom  # noqa: E402
from ctseg.pipeline.local_runner import run_ingest  # noqa: E402
from ctseg.models.unet import data, trainer  # noqa: E402
from ctseg.models.unet.config import UnetConfig  # noqa: E402
from ctseg.models.unet.model import flops_per_slice  # noqa: E402


def _measure(fit, slices: int) -> tuple[float, float]:
    """Slices per second of wall time, and CPU milliseconds per slice of this process (robust to other load)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fit()
    return slices / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / slices


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--config", default="{}", help="more custom_config as JSON")
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--phantom-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=15, help="batches per measured round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--workdir", default="/tmp/ctseg-bench-train")
    args = ap.parse_args(argv)
    config = UnetConfig.from_custom_config({"preset": args.preset, **json.loads(args.config)})
    work = Path(args.workdir)
    phantom = work / f"phantom-{args.patients}x{args.slices}-{args.phantom_size}"
    if not phantom.exists():
        write_phantom(phantom, patients=args.patients, slices=args.slices, size=args.phantom_size, seed=0)
    pattern = run_ingest(data_root=phantom, workdir=work / f"ingest-{phantom.name}-{config.image_size}",
                         image_size=config.image_size)["train"]

    strategy = trainer.distribution_strategy()
    batch_size = config.batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        model = trainer._build_model(config)
    pipeline = trainer._input_fn([pattern], config, batch_size, training=True)
    hu, mask = (np.concatenate(parts) for parts in zip(*(
        (h.numpy().astype(np.float32), m.numpy().astype(np.float32)) for h, m in data.parsed_dataset(pattern, config.image_size).batch(256))))
    slices = args.steps * batch_size
    repeats = -(-slices // hu.shape[0])  # enough rows for every measured step: no early end of data
    hu_rows, mask_rows = np.tile(hu, (repeats, 1, 1)), np.tile(mask, (repeats, 1, 1))

    def fit_pipeline():
        model.fit(pipeline, epochs=1, steps_per_epoch=args.steps, verbose=0)

    def fit_arrays():
        model.fit(hu_rows, mask_rows, batch_size=batch_size, epochs=1, steps_per_epoch=args.steps, shuffle=True, verbose=0)

    fit_pipeline(), fit_arrays()  # warm-up: tracing, the pipeline's cache
    rates, cpu_ms = {"pipeline": [], "arrays": []}, {"pipeline": [], "arrays": []}
    for _ in range(args.rounds):
        for name, fit in (("pipeline", fit_pipeline), ("arrays", fit_arrays)):
            rate, ms = _measure(fit, slices)
            rates[name].append(rate)
            cpu_ms[name].append(ms)
    median = {k: statistics.median(v) for k, v in rates.items()}
    paired = statistics.median(p / a for p, a in zip(rates["pipeline"], rates["arrays"]))
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU"]
    print(json.dumps({
        "preset": config.preset, "image_size": config.image_size, "depth": config.depth,
        "base_filters": config.base_filters, "batch_size": batch_size, "devices": devices,
        "train_slices_in_memory": int(hu.shape[0]), "parameters": int(model.count_params()),
        "gflops_per_slice_forward": round(flops_per_slice(model) / 1e9, 3),
        "slices_per_second": {k: round(v, 1) for k, v in median.items()},
        "rounds": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "cpu_ms_per_slice": {k: round(statistics.median(v), 2) for k, v in cpu_ms.items()},
        "ratio_pipeline_to_arrays": round(paired, 3),
        "load_average": [round(x, 2) for x in os.getloadavg()]}, indent=1))


if __name__ == "__main__":
    main()
