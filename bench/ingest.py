"""Ingest speed, all on the same phantom files in one run: slice pairs (image + mask) per second of

- IrcadExampleGen's executor (Beam DirectRunner): read, HU, order, resize, example, gzipped TFRecords,
  on the extracted folder and on the nested `3Dircadb1.zip`;
- the seed's input path: tf.data over `tensorflow_io.image.decode_dicom_image` plus `tf.image.resize`;
- a bare `pydicom.dcmread(...).pixel_array` loop, the floor for any pydicom-based reader.

Every path first runs on a one-patient warm-up phantom (imports, library loads, tf.function
tracing). Each then runs on two phantoms of the same patients, `--slices` and 3x `--slices` per
patient, `--repeat` times each, the fastest run counting: the end-to-end rate on the smaller one
keeps Beam's fixed start-up cost in; the marginal rate (extra pairs / extra seconds between the
two) is the steady state a full IRCAD run (about 2,800 slices) sees. Each rate comes with the
process's CPU time per pair (user + system, every thread; `resource.getrusage`), which other load
on the machine disturbs far less than wall time: "per core" compares those.
TFX's own Beam-executor set-up (it packages TFX as an sdist once per Beam component run, whatever
the component) is timed apart.

    .venv/bin/python -m bench.ingest [--patients 6] [--slices 20] [--size 512] [--image-size 256] [--workers 1]
        [--repeat 3] [--out rates.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from ctseg.cpu_kernels import usable_cores
from ctseg.quiet import silence

BARE, SEED, FOLDER, ZIP = ("bare pydicom.dcmread loop", "seed: tf.data + tfio decode_dicom_image",
                           "IrcadExampleGen, folder", "IrcadExampleGen, 3Dircadb1.zip")


def pairs_of(root: Path, organ: str = "liver") -> list[tuple[str, str]]:
    return [(str(image), str(patient / "MASKS_DICOM" / organ / image.name))
            for patient in sorted(root.iterdir()) for image in sorted((patient / "PATIENT_DICOM").iterdir())]


def bare_pydicom(pairs: list[tuple[str, str]]) -> int:
    import pydicom

    for image, mask in pairs:
        pydicom.dcmread(image).pixel_array
        pydicom.dcmread(mask).pixel_array
    return len(pairs)


def seed_tf_data(pairs: list[tuple[str, str]], image_size: int) -> int:
    """The blog post's input path: decode_dicom_image (scale='auto') and a bilinear resize, in tf.data."""
    import tensorflow as tf
    import tensorflow_io as tfio

    def load(path):
        image = tfio.image.decode_dicom_image(tf.io.read_file(path), dtype=tf.uint16, scale="auto", on_error="lossy")
        return tf.image.resize(tf.cast(image[0], tf.float32), (image_size, image_size))

    images, masks = zip(*pairs)
    ds = (tf.data.Dataset.from_tensor_slices((list(images), list(masks)))
          .map(lambda i, m: (load(i), load(m)), num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
    return sum(1 for _ in ds)


def make_executor(workers: int, tmp: Path):
    """IrcadExampleGen's executor as LocalDagRunner builds it (this is where TFX packages itself for Beam)."""
    from tfx.dsl.components.base import base_beam_executor

    from ctseg.components.ingest.executor import Executor

    mode = "in_memory" if workers == 1 else "multi_processing"
    return Executor(base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=[f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"],
        tmp_dir=str(tmp) + "/", unique_id="bench"))


def ingest(executor, data_root: Path, image_size: int, out: Path) -> int:
    """One Do(): the component's whole run, Beam pipeline start to finalized files and properties."""
    from tfx.types import standard_artifacts

    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    executor.Do({}, {"examples": [examples]}, {
        "data_root": str(data_root), "organ": "liver", "image_size": image_size,
        "split_ratios": json.dumps({"train": 0.75, "eval": 0.25}), "max_bad_fraction": 0.0})
    return sum(examples.get_int_custom_property(f"slices_{s}") for s in ("train", "eval"))


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn, *args) -> tuple[int, float, float]:
    """(pairs, wall seconds, CPU seconds of this process's threads)."""
    start, cpu = time.perf_counter(), _cpu_s()
    n = fn(*args)
    return n, time.perf_counter() - start, _cpu_s() - cpu


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--slices", type=int, default=20, help="slices per patient of the smaller phantom (+-20%%)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of the source DICOM")
    parser.add_argument("--image-size", type=int, default=256, help="ingest's output size")
    parser.add_argument("--workers", type=int, default=1, help="Beam DirectRunner workers (1: in_memory)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each path and size; the fastest counts "
                                                              "(a shared machine's noise only ever slows a run)")
    parser.add_argument("--out", help="also write the rates as JSON here")
    args = parser.parse_args(argv)
    silence(False)
    import tensorflow  # noqa: F401  (loaded before any timing: every path needs it)

    from ctseg.phantom import write_phantom

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def phantom(name: str, patients: int, slices: int, seed: int, as_zip: bool = False) -> Path:
            return write_phantom(tmp / name, patients=patients, slices=slices, size=args.size, seed=seed,
                                 as_zip=as_zip)

        start = time.perf_counter()
        executor = make_executor(args.workers, tmp / "executor_tmp")
        setup_s = time.perf_counter() - start
        outputs = iter(range(10 ** 6))

        def component(data_root: Path, _pairs) -> int:
            return ingest(executor, data_root, args.image_size, tmp / f"out{next(outputs)}")

        runs = {BARE: lambda _, pairs: bare_pydicom(pairs),
                SEED: lambda _, pairs: seed_tf_data(pairs, args.image_size),
                FOLDER: component, ZIP: component}
        folder_warm, zip_warm = phantom("warm", 1, 4, 1), phantom("warm.zip", 1, 4, 1, as_zip=True)
        for name, run in runs.items():
            run(zip_warm if name == ZIP else folder_warm, pairs_of(folder_warm))

        timings: dict[str, list[tuple[int, float, float]]] = {name: [] for name in runs}
        for k, slices in enumerate((args.slices, 3 * args.slices)):
            folder = phantom(f"ircad{k}", args.patients, slices, 0)
            zipped = phantom(f"ircad{k}.zip", args.patients, slices, 0, as_zip=True)
            pairs = pairs_of(folder)
            for path in folder.rglob("image_*"):
                path.read_bytes()  # page cache: every path reads warm files
            for name, run in runs.items():
                n, seconds, cpu_s = min((_timed(run, zipped if name == ZIP else folder, pairs)
                                         for _ in range(args.repeat)), key=lambda r: r[1])
                if n != len(pairs):
                    raise SystemExit(f"{name}: {n} slice pairs instead of {len(pairs)}")
                timings[name].append((n, seconds, cpu_s))
                print(f"{name:42s} {n:5d} pairs {seconds:7.2f} s {n / seconds:8.1f} pairs/s "
                      f"{1000 * cpu_s / n:6.2f} CPU ms/pair", flush=True)

    rates = {}
    for name, ((n1, t1, c1), (n2, t2, c2)) in timings.items():
        rates[name] = {"end_to_end": n1 / t1, "marginal": (n2 - n1) / max(t2 - t1, 1e-9),
                       "cpu_ms_end_to_end": 1000 * c1 / n1, "cpu_ms_marginal": 1000 * (c2 - c1) / (n2 - n1)}
    print(f"\n{args.patients} patients, {timings[BARE][0][0]} and {timings[BARE][1][0]} slice pairs at "
          f"{args.size}x{args.size} -> {args.image_size}, Beam DirectRunner "
          f"{'in_memory' if args.workers == 1 else f'multi_processing x{args.workers}'}")
    print(f"{'path':42s} {'end-to-end':>12s} {'marginal':>12s}   (pairs/s)   CPU ms/pair end-to-end, marginal")
    for name, r in rates.items():
        print(f"{name:42s} {r['end_to_end']:12.1f} {r['marginal']:12.1f}   {r['cpu_ms_end_to_end']:8.2f} "
              f"{r['cpu_ms_marginal']:8.2f}")
    for name in (FOLDER, ZIP):
        for kind in ("end_to_end", "marginal"):
            print(f"{name} ({kind}): {rates[name][kind] / rates[SEED][kind]:.2f}x the seed's rate, "
                  f"{rates[BARE][kind] / rates[name][kind]:.2f}x slower than the bare read; per core (CPU per "
                  f"pair) {rates[name]['cpu_ms_' + kind] / rates[BARE]['cpu_ms_' + kind]:.2f}x the bare read's")
    print(f"zip form: {rates[FOLDER]['marginal'] / rates[ZIP]['marginal']:.2f}x the folder form's time at the "
          f"margin, {rates[ZIP]['cpu_ms_marginal'] / rates[FOLDER]['cpu_ms_marginal']:.2f}x its CPU per pair")
    print(f"TFX Beam-executor set-up, once per component run and not timed above: {setup_s:.1f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"pairs": [timings[BARE][0][0], timings[BARE][1][0]], "rates": rates,
                                              "cores": usable_cores(),
                                              "load_average": os.getloadavg()}, indent=1) + "\n")
    return rates


if __name__ == "__main__":
    main()
