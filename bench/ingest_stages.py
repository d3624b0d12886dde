"""Where IrcadExampleGen's CPU goes per slice pair, stage by stage, on one thread and without Beam: the same
functions the executor calls per slice (open the patient's series, read the image and mask bytes, decode each,
build and serialize the example, frame the record with its CRC32C, deflate it as the sink does), timed with the
process's CPU clock on the extracted folder and on the nested `3Dircadb1.zip` of the same phantom. The fastest of
`--repeat` passes counts per stage. What this leaves out is Beam's own cost and the threads' hand-offs: the
component's CPU per pair in `bench.ingest` minus the total here. The `floor` line times the bare read
(`pydicom.dcmread(path).pixel_array` of both files, as `bench.ingest` does) and the resize alone on the same
folder: what the resize, the example and the deflate cost before any parse, against the bare read.

    .venv/bin/python -m bench.ingest_stages [--patients 3] [--slices 90] [--size 512] [--image-size 256] [--repeat 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ctseg.quiet import silence

STAGES = ("open", "read image", "read mask", "decode image", "decode mask", "example", "record CRC32C", "deflate")


def stage_times(root: Path, organ: str, image_size: int) -> tuple[int, dict[str, float]]:
    """(slice pairs, CPU seconds per stage) for one pass over every patient under `root`."""
    from ctseg import ircad
    from ctseg.components.ingest import executor, tfrecord_sink

    spent = dict.fromkeys(STAGES, 0.0)
    pairs = 0

    def timed(stage, fn, *args):
        start = time.process_time()
        result = fn(*args)
        spent[stage] += time.process_time() - start
        return result

    for ref in ircad.find_patients(str(root)):
        start = time.process_time()
        with ircad.open_patient(ref, organ) as patient:
            spent["open"] += time.process_time() - start
            decoded = {}
            for name in sorted(patient.image_files):
                ct = timed("decode image", ircad.decode_slice, timed("read image", patient.images.read, name),
                           name, image_size)
                mask = timed("decode mask", ircad.decode_mask, timed("read mask", patient.masks.read, name),
                             name, image_size)
                decoded[name] = (ct, mask)
                pairs += 1
        for index, name in enumerate(sorted(decoded, key=lambda n: decoded[n][0].sort_key)):
            example = timed("example", executor._serialized_example, ref.patient_id, index, *decoded[name])
            timed("deflate", tfrecord_sink._deflated, timed("record CRC32C", tfrecord_sink.framed, example))
    return pairs, spent


def bare_read_and_resize(root: Path, organ: str, image_size: int) -> tuple[int, float, float]:
    """(slice pairs, CPU seconds of `bench.ingest`'s bare read on every pair, CPU seconds of the antialiased resize
    alone on the images' stored pixels): the floor under the stages above."""
    import pydicom

    from bench.ingest import bare_pydicom, pairs_of
    from ctseg import dicom

    pairs = pairs_of(root, organ)
    start = time.process_time()
    bare_pydicom(pairs)
    read = time.process_time() - start
    stored = [pydicom.dcmread(image).pixel_array for image, _ in pairs]
    start = time.process_time()
    for pixels in stored:
        dicom.resize_hu(pixels, image_size)
    return len(pairs), read, time.process_time() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--slices", type=int, default=90)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    silence(False)
    import tensorflow  # noqa: F401  (the executor's module imports it; loaded before any timing)

    from ctseg.phantom import write_phantom

    with tempfile.TemporaryDirectory() as tmp:
        forms = {form: write_phantom(Path(tmp) / name, patients=args.patients, slices=args.slices, size=args.size,
                                     seed=0, as_zip=form == "zip")
                 for form, name in (("folder", "ircad"), ("zip", "3Dircadb1.zip"))}
        for form, root in forms.items():
            stage_times(root, "liver", args.image_size)  # warm-up: imports, page cache
            passes = [stage_times(root, "liver", args.image_size) for _ in range(args.repeat)]
            pairs = passes[0][0]
            best = {stage: min(spent[stage] for _, spent in passes) for stage in STAGES}
            print(f"{form:6s} {pairs} pairs, CPU ms a pair: " + ", ".join(
                f"{stage} {1000 * best[stage] / pairs:.3f}" for stage in STAGES)
                  + f"; total {1000 * sum(best.values()) / pairs:.3f}", flush=True)
            if form == "folder":
                bare_read_and_resize(root, "liver", args.image_size)
                floors = [bare_read_and_resize(root, "liver", args.image_size) for _ in range(args.repeat)]
                read, resize = min(f[1] for f in floors), min(f[2] for f in floors)
                least = resize + best["example"] + best["deflate"]
                print(f"floor  {pairs} pairs, CPU ms a pair: bare read (dcmread(path).pixel_array, image and mask) "
                      f"{1000 * read / pairs:.3f}, the resize alone {1000 * resize / pairs:.3f}; resize + example + "
                      f"deflate {least / read:.2f}x the bare read, the whole pair {sum(best.values()) / read:.2f}x",
                      flush=True)


if __name__ == "__main__":
    main()
