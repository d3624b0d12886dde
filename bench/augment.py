"""What the train step's augmentation costs, transform by transform, on this machine's CPU or GPU.

Each transform of `ctseg.models.unet.augment` runs on a batch of CT-like slice stacks in which every slice draws
it (one `tf.function` per transform, after a warm-up call); then the whole `augment_batch` with the default
probabilities, and, as the baseline measured in the same run, the network's own train step on the same batch (the
UNET compiled without the augmenting train step, as `bench.train` builds it). Reported per item: the median over
`--rounds` of wall and process-CPU milliseconds a batch, and the ratio to that train step. tensorflow-addons'
`median_filter2d` (what the median was until 0b9cd54) is timed beside `median3x3` for reference.

    .venv/bin/python -m bench.augment [--preset small] [--calls 20] [--rounds 3] [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from ctseg.cpu_kernels import prefer_onednn
from ctseg.quiet import silence


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--calls", type=int, default=20, help="calls a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    silence(False)
    prefer_onednn()
    import numpy as np
    import tensorflow as tf
    import tensorflow_addons as tfa

    from ctseg.models.unet import augment as A
    from ctseg.models.unet.config import UnetConfig
    from ctseg.models.unet.model import build_unet, compile_model

    config = UnetConfig.from_custom_config({"preset": args.preset})
    rng = np.random.default_rng(0)
    n, size, channels = config.batch_size, config.image_size, config.channels
    hu = tf.constant(rng.normal(40.0, 200.0, (n, size, size, channels)).astype(np.float32))
    mask = tf.constant((rng.random((n, size, size, 1)) > 0.7).astype(np.float32))
    c = config
    transforms = {
        "rotation and zoom": lambda h, m: A._affine(h, m, tf.fill([n], c.max_rotation_degrees),
                                                    tf.fill([n], c.max_scale)),
        "elastic": lambda h, m: A._elastic(h, m, c.elastic_max_px),
        "HU scale": lambda h, m: A._hu_scale(h, m, c.max_hu_scale),
        "HU shift": lambda h, m: A._hu_shift(h, m, c.max_hu_shift),
        "shading": lambda h, m: A._shading(h, m, c.max_shading_hu),
        "blur": lambda h, m: A._blur(h, m, c.max_blur_sigma_px),
        "median (median3x3)": A._median,
        "median (tfa.image.median_filter2d, before 0b9cd54)": lambda h, m: (tfa.image.median_filter2d(h, 3), m),
        "coarser grid": lambda h, m: A._low_resolution(h, m, c.min_resolution_scale),
        "noise": lambda h, m: A._noise(h, m, c.noise_std_min_hu, c.noise_std_hu),
        "augment_batch, default probabilities": lambda h, m: A.augment_batch(h, m[..., 0], c),
    }
    model = compile_model(build_unet(config), config, decay_steps=1000)  # as bench.train's "no augmentation"
    batches = tf.data.Dataset.from_tensors((hu, mask[..., 0])).repeat()
    timed = {name: (lambda f=tf.function(fn): f(hu, mask)[0].numpy()) for name, fn in transforms.items()}
    timed["train step without augmentation (baseline)"] = lambda: model.train_on_batch(hu, mask[..., 0])
    model.fit(batches, epochs=1, steps_per_epoch=2, verbose=0)

    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in timed}
    for work in timed.values():
        work()
    for _ in range(args.rounds):
        for name, work in timed.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.calls):
                work()
            rounds[name].append((1000 * (time.perf_counter() - wall) / args.calls,
                                 1000 * (time.process_time() - cpu) / args.calls))
    baseline = statistics.median(w for w, _ in rounds["train step without augmentation (baseline)"])
    result = {"preset": args.preset, "batch": [n, size, size, channels], "items": {}}
    print(f"{'ms a batch of ' + str(n):52s} {'wall':>8s} {'CPU':>8s} {'/ train step':>13s}")
    for name, values in rounds.items():
        wall, cpu = statistics.median(w for w, _ in values), statistics.median(c for _, c in values)
        result["items"][name] = {"wall_ms": round(wall, 2), "cpu_ms": round(cpu, 2),
                                 "to_train_step": round(wall / baseline, 3)}
        print(f"{name:52s} {wall:8.2f} {cpu:8.2f} {wall / baseline:12.3f}x", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
