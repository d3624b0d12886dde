"""Where IrcadExampleGen's CPU per slice pair goes beyond its stages: the component taken apart at the margin.

`bench.ingest_stages` times each stage on one thread without Beam; `bench.ingest` times the whole component. This
runs, on the same phantom folders, the executor's per-patient generator (`_ingest_patient`: decode, order, examples)
driven directly on one decode thread and on one per core, without and with the sink's gzip file (its writer thread;
the records come deflated from the decode threads, as the component makes them), then
the whole component (Beam's DirectRunner around the same), and the bare read. Each on a phantom of `--slices` and of
3x `--slices` a patient; the difference is the margin a long run sees. Per pair: CPU ms (user + system, every thread
of the process), the system part of it, and the voluntary context switches (a thread that waits on another: the
hand-offs between the decode, compressing and writing threads). The least CPU of `--repeat` runs counts.

    .venv/bin/python -m bench.ingest_threads [--patients 3] [--slices 30] [--size 512] [--image-size 256] [--repeat 3]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import resource
import tempfile
from pathlib import Path

from ctseg.cpu_kernels import usable_cores
from ctseg.quiet import silence


def _usage() -> tuple[float, float, int]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime, u.ru_stime, u.ru_nvcsw


def generator(root: Path, image_size: int, threads: int, out: Path | None) -> int:
    """The executor's per-patient work on `threads` decode threads, its records deflated there and written through
    the sink's gzip file at `out`, or dropped when `out` is None; returns the records."""
    from ctseg import ircad
    from ctseg.components.ingest import executor, tfrecord_sink

    records = 0
    with concurrent.futures.ThreadPoolExecutor(threads) as decoding:
        sink = tfrecord_sink.GzipTFRecordSink(str(out)) if out else None
        gzip_file = sink.open(str(out)) if sink else None
        for ref in ircad.find_patients(str(root)):
            for item in executor._ingest_patient(ref, "train", "liver", image_size, decoding,
                                                       deflate=out is not None):
                if isinstance(item, tuple):
                    records += 1
                    if sink:
                        sink.write_record(gzip_file, item[1])
        if gzip_file:
            gzip_file.close()
    return records


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--slices", type=int, default=30, help="slices per patient of the smaller phantom")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    silence(False)
    import tensorflow  # noqa: F401  (the executor's module imports it; loaded before any timing)

    from bench.ingest import bare_pydicom, ingest, make_executor, pairs_of
    from ctseg.phantom import write_phantom

    cores = usable_cores()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        outputs = iter(range(10 ** 6))

        def out() -> Path:
            return tmp / f"out{next(outputs)}"

        beam = make_executor(1, tmp / "executor_tmp")
        runs = {"bare read (dcmread(path).pixel_array, both files)": lambda root: bare_pydicom(pairs_of(root)),
                "generator, 1 decode thread, no sink": lambda root: generator(root, args.image_size, 1, None),
                f"generator, {cores} decode threads, no sink": lambda root: generator(root, args.image_size, cores,
                                                                                     None),
                "generator + gzip file, 1 thread each": lambda root: generator(root, args.image_size, 1, out()),
                f"generator + gzip file, {cores} threads each": lambda root: generator(root, args.image_size, cores,
                                                                                     out()),
                "component (Beam DirectRunner, in_memory)": lambda root: ingest(beam, root, args.image_size, out())}
        roots = [write_phantom(tmp / f"ircad{k}", patients=args.patients, slices=slices, size=args.size, seed=0)
                 for k, slices in enumerate((args.slices, 3 * args.slices))]
        for run in runs.values():
            run(roots[0])  # warm-up: imports, tracing, page cache
        margins = {}
        for name, run in runs.items():
            spent = []
            for root in roots:
                best = None
                for _ in range(args.repeat):
                    before = _usage()
                    n = run(root)
                    used = tuple(after - start for start, after in zip(before, _usage()))
                    best = (n, *used) if best is None or used[0] < best[1] else best
                spent.append(best)
            (n1, cpu1, sys1, cs1), (n2, cpu2, sys2, cs2) = spent
            if (n1, n2) != (len(pairs_of(roots[0])), len(pairs_of(roots[1]))):
                raise SystemExit(f"{name}: {n1} and {n2} slice pairs, not every pair of the phantoms")
            margins[name] = {"pairs": (n1, n2), "cpu_ms": 1000 * (cpu2 - cpu1) / (n2 - n1),
                             "sys_ms": 1000 * (sys2 - sys1) / (n2 - n1), "switches": (cs2 - cs1) / (n2 - n1)}
            print(f"{name:48s} CPU {margins[name]['cpu_ms']:5.2f} ms a pair (system {margins[name]['sys_ms']:4.2f}), "
                  f"{margins[name]['switches']:5.1f} voluntary context switches a pair", flush=True)
    bare = next(iter(margins.values()))["cpu_ms"]
    for name, m in list(margins.items())[1:]:
        print(f"{name:48s} {m['cpu_ms'] / bare:.2f}x the bare read's CPU a pair")
    return margins


if __name__ == "__main__":
    main()
