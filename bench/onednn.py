"""Train and predict steps on TensorFlow's two CPU kernel sets: Eigen's (TF_ENABLE_ONEDNN_OPTS=0, what TF 2.15
picks by itself on AVX2 CPUs) against oneDNN's (what `ctseg` sets, ctseg.cpu_kernels).

TensorFlow reads the variable once, when it loads, so each measurement is a child process; the two kernel sets
alternate round by round so that load from other processes hits both alike. A child builds the Trainer's model
(`trainer._build_model`: the UNET with its augmentation in the train step, compiled as the Trainer compiles it),
warms it up on one random batch of CT-like HU, then times `--steps` train steps and as many predict batches.
Reported per kernel set: the median over rounds of CPU milliseconds a step (user + system time of the child, the
figure least disturbed by other jobs) and of wall milliseconds a step; the ratio is Eigen's over oneDNN's.

    .venv/bin/python -m bench.onednn [--preset small] [--steps 20] [--rounds 3] [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNELS = {"eigen": "0", "onednn": "1"}


def child(preset: str, steps: int) -> dict:
    """Runs in the child: times train and predict steps under whatever kernels TensorFlow loaded with."""
    import resource
    import time

    from ctseg.quiet import silence

    silence(False)
    import numpy as np
    import tensorflow as tf

    from ctseg.cpu_kernels import onednn_in_use
    from ctseg.models.unet import trainer
    from ctseg.models.unet.config import UnetConfig

    config = UnetConfig.from_custom_config({"preset": preset})
    model = trainer._build_model(config, total_steps=1000)
    rng = np.random.default_rng(0)
    shape = (config.batch_size,) + tuple(model.input_shape[1:])
    hu = rng.normal(40, 200, shape).astype(np.float32)
    mask = (rng.random((config.batch_size,) + tuple(model.output_shape[1:])) > 0.7).astype(np.float32)
    batches = tf.data.Dataset.from_tensors((hu, mask)).repeat()

    def cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def timed(work) -> tuple[float, float]:
        cpu, wall = cpu_s(), time.perf_counter()
        work()
        return 1000 * (cpu_s() - cpu) / steps, 1000 * (time.perf_counter() - wall) / steps

    model.fit(batches, epochs=1, steps_per_epoch=3, verbose=0)
    model.predict_on_batch(hu)
    train = timed(lambda: model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0))
    predict = timed(lambda: [model.predict_on_batch(hu) for _ in range(steps)])
    return {"onednn": onednn_in_use(), "train_cpu_ms": train[0], "train_wall_ms": train[1],
            "predict_cpu_ms": predict[0], "predict_wall_ms": predict[1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=20, help="train steps (and predict batches) a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.preset, args.steps)))
        return 0
    rounds: dict[str, list[dict]] = {name: [] for name in KERNELS}
    for r in range(args.rounds):
        for name, value in KERNELS.items():
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": value}
            done = subprocess.run([sys.executable, "-m", "bench.onednn", "--child", "--preset", args.preset,
                                   "--steps", str(args.steps)], cwd=REPO, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"bench.onednn: the {name} child failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if result["onednn"] is not None and result["onednn"] != (value == "1"):
                sys.exit(f"bench.onednn: TF_ENABLE_ONEDNN_OPTS={value} did not set the kernels ({result})")
            rounds[name].append(result)
            print(f"round {r + 1} {name:6s} train {result['train_cpu_ms']:7.0f} CPU ms/step "
                  f"{result['train_wall_ms']:7.0f} wall ms/step; predict {result['predict_cpu_ms']:6.0f} CPU ms, "
                  f"{result['predict_wall_ms']:6.0f} wall ms a batch", flush=True)
    summary = {name: {key: statistics.median(r[key] for r in results) for key in results[0] if key != "onednn"}
               for name, results in rounds.items()}
    ratios = {key: summary["eigen"][key] / summary["onednn"][key] for key in summary["eigen"]}
    print(f"\n{args.preset} preset, {args.steps} steps a round, medians of {args.rounds} rounds "
          f"(load average at the end {os.getloadavg()[0]:.1f})")
    for key, ratio in ratios.items():
        print(f"{key:15s} Eigen {summary['eigen'][key]:7.0f}  oneDNN {summary['onednn'][key]:7.0f}  "
              f"Eigen/oneDNN {ratio:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"rounds": rounds, "medians": summary, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
