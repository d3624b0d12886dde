"""IrcadExampleGen's executor: a Beam pipeline from IRCAD DICOM to gzipped TFRecords of slice examples.

One Beam element per patient (a Reshuffle spreads patients over workers): its files are listed
and read where it runs, decoded to HU, ordered by ImagePositionPatient, resized, and written to its
split. Bad files go to a side output that becomes `<examples.uri>/quarantine.jsonl`; per-patient
counts come back through another, so every runner (Direct, Dataflow, Flink, Spark) reports the same.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Iterable, Iterator

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from ctseg import geometry, ircad
from ctseg.components.ingest.tfrecord_sink import GzipTFRecordSink, deflate_record
from ctseg.cpu_kernels import usable_cores
from ctseg.dicom import DicomError
from ctseg.errors import CtsegError
from ctseg.features import check_image_size, serialized_slice_example
from ctseg.knobs import parse_split_ratios

EXAMPLES_KEY = "examples"
FINGERPRINT_KEY = "input_fingerprint"  # TFX's name (example_gen/utils.py FINGERPRINT_PROPERTY_NAME)
QUARANTINE_FILE = "quarantine.jsonl"
SKIPPED_FILE = "skipped.jsonl"  # operating-system debris (Thumbs.db, .DS_Store, __MACOSX/...): listed, not read
WORST_FILES_SHOWN = 5
_QUARANTINE, _SUMMARY = "quarantine", "summary"  # side outputs: one record per bad file, one per patient

log = logging.getLogger(__name__)


def _hash_unit(patient_id: str) -> float:
    """A number in [0, 1) fixed by the patient id alone (not Python's salted hash())."""
    return int.from_bytes(hashlib.sha256(patient_id.encode()).digest()[:8], "big") / 2.0 ** 64


def assign_splits(patient_ids: Iterable[str], ratios: dict[str, float]) -> dict[str, str]:
    """Patient id → split, deterministically, so no patient is in two splits.

    Each patient falls in the split whose share of [0, 1) (cumulative `ratios`, in order) holds
    the hash of its id, so a patient's split does not depend on the other patients. With few
    patients a split may come out empty; while there are at least as many patients as splits,
    each empty split then takes, from a split holding two or more, the patient whose hash is
    nearest its share (ties by id).
    """
    ratios = parse_split_ratios(ratios)
    bounds, lo = {}, 0.0
    for name, ratio in ratios.items():
        bounds[name] = (lo, lo + ratio)
        lo += ratio
    units = {pid: _hash_unit(pid) for pid in sorted(set(patient_ids))}
    split_of = {pid: next((n for n, (a, b) in bounds.items() if u < b), list(ratios)[-1]) for pid, u in units.items()}
    if len(units) < len(ratios):
        return split_of

    def distance(pid: str, name: str) -> float:
        a, b = bounds[name]
        return max(a - units[pid], units[pid] - b, 0.0)

    for name in ratios:
        if name in split_of.values():
            continue
        sizes = {n: list(split_of.values()).count(n) for n in ratios}
        donors = [pid for pid in units if sizes[split_of[pid]] >= 2]
        split_of[min(donors, key=lambda pid: (distance(pid, name), pid))] = name
    return split_of


def _quarantine(patient_id: str, location: str, reason: str) -> beam.pvalue.TaggedOutput:
    log.warning("quarantined %s: %s", location, reason)
    return beam.pvalue.TaggedOutput(_QUARANTINE, {"patient_id": patient_id, "file": location, "reason": reason})


def _decode_pair(patient: ircad.PatientSeries, name: str, organ: str, size: int):
    """(CtSlice or None, Mask or None, [(file, reason)...]) for the slice file `name` and its mask."""
    images, masks = patient.image_files, patient.mask_files
    ct = mask = None
    problems = []
    if name not in images:
        return None, None, [(masks[name], f"mask without its slice: no {ircad.IMAGES_DIR}/{name}")]
    try:
        ct = ircad.decode_slice(patient.images.read(name), images[name], size)
    except (DicomError, ircad.MemberError) as e:
        problems.append((e.source, e.reason))
    if name not in masks:
        problems.append((images[name], f"slice without its mask: no {ircad.MASKS_DIR}/{organ}/{name}" if patient.masks
                         else f"slice without its mask: the patient has no {ircad.MASKS_DIR}/{organ} folder"))
    elif ct is not None:
        try:
            mask = ircad.decode_mask(patient.masks.read(name), masks[name], size)
        except (DicomError, ircad.MemberError) as e:
            problems.append((e.source, e.reason))
        if mask is not None and mask.source_shape != ct.source_shape:
            problems.append((masks[name], f"mask is {mask.source_shape[0]}x{mask.source_shape[1]} "
                                          f"but its slice is {ct.source_shape[0]}x{ct.source_shape[1]}"))
            mask = None
    return ct, mask, problems


def _same_position(ordered: dict[str, tuple]) -> dict[str, list[str]]:
    """Slice name → the other slices at its ImagePositionPatient (to 1 µm along the normal), for every shared one."""
    at: dict[float, list[str]] = {}
    for name, (ct, _) in ordered.items():
        has_position, position_mm = ct.sort_key[:2]
        if has_position == 0:
            at.setdefault(round(position_mm, 3), []).append(name)
    return {n: [o for o in names if o != n] for names in at.values() if len(names) > 1 for n in names}


def _positioned(ordered: dict[str, tuple]) -> list[str]:
    """The names of the slices with a position, in position order."""
    return sorted((n for n in ordered if ordered[n][0].sort_key[0] == 0), key=lambda n: ordered[n][0].sort_key)


def _geometry_problems(ordered: dict[str, tuple], check_gaps: bool = True) -> list[tuple[str, str]]:
    """(name, why) for the slices `ctseg.geometry` refuses in a series, as `ctseg predict` refuses them: a
    pixel spacing other than the patient's usual one, and with `check_gaps` the slice after each gap in the
    positions (the model would take slices across the gap for neighbours); a patient with quarantined
    files has its gaps there, already named."""
    names = _positioned(ordered)
    spacing = geometry.mixed_spacing(names, [(ordered[n][0].spacing_mm,) * 2 for n in names])
    gaps = geometry.position_gaps(names, [ordered[n][0].sort_key[1] for n in names]) if check_gaps else []
    return sorted(dict(spacing + gaps).items())


def _with_slice_depth(ordered: dict[str, tuple]) -> dict[str, tuple]:
    """Every slice with the series' slice depth (`ctseg.geometry.slice_depth_mm`) as `thickness_mm`: the
    depth the evaluator's volumes and surface distances then share with `ctseg predict`'s."""
    names = _positioned(ordered)
    if not names:
        return ordered
    depth = geometry.slice_depth_mm([ordered[n][0].sort_key[1] for n in names], ordered[names[0]][0].thickness_mm)
    if depth is None:
        return ordered
    return {n: (dataclasses.replace(ct, thickness_mm=depth), mask) for n, (ct, mask) in ordered.items()}


def _summary(pid: str, split: str, slices: int, bad: int, skipped: list[str], written: int = 0, with_organ: int = 0):
    return beam.pvalue.TaggedOutput(_SUMMARY, {"patient_id": pid, "split": split, "slices": max(slices, 1),
                                              "written": written, "with_organ": with_organ, "bad": bad,
                                              "skipped": skipped})


def ingest_patient(ref: ircad.PatientRef, split: str, organ: str, size: int, deflate: bool = False) -> Iterator[Any]:
    """Yields (split, serialized example) per good slice, and tagged quarantine records and one summary; with
    `deflate`, (split, `DeflatedRecord`): the record's gzip piece made on the decode thread, for the component's sink.

    Slices pair by file name (`PATIENT_DICOM/image_N` with `MASKS_DICOM/<organ>/image_N`);
    `slice_index` is the rank by position among the patient's readable images, so a quarantined
    slice leaves a gap instead of shifting its neighbours. Slices sharing one ImagePositionPatient are
    quarantined (a duplicated file or a second series mixed in); operating-system debris is listed in
    the summary, not counted. A series zip that cannot be opened quarantines the patient under its name.
    """
    with concurrent.futures.ThreadPoolExecutor(decode_threads(), thread_name_prefix="ingest") as pool:
        yield from _ingest_patient(ref, split, organ, size, pool, deflate)


def decode_threads() -> int:
    """Threads that decode one patient's slices and build its examples: one per core this process may use.
    Reading, inflating, resizing and copying pixels release the GIL, so threads use a local run's cores
    without the start-up of worker processes."""
    return usable_cores()


def _ingest_patient(ref: ircad.PatientRef, split: str, organ: str, size: int,
                    pool: concurrent.futures.Executor, deflate: bool = False) -> Iterator[Any]:
    pid = ref.patient_id
    try:
        with ircad.open_patient(ref, organ) as patient:
            skipped = patient.skipped
            names = sorted(set(patient.image_files) | set(patient.mask_files))
            bad: set[str] = set()
            if not names:
                bad.add("")
                yield _quarantine(pid, patient.location, f"empty patient folder: no {ircad.IMAGES_DIR} images "
                                                         f"and no {ircad.MASKS_DIR}/{organ} masks")
            ordered = {}  # name -> (CtSlice, Mask or None): every readable image takes part in the ordering
            decoded = pool.map(lambda name: _decode_pair(patient, name, organ, size), names)
            for name, (ct, mask, problems) in zip(names, decoded):
                for location, reason in problems:
                    yield _quarantine(pid, location, reason)
                if problems:
                    bad.add(name)
                if ct is not None:
                    ordered[name] = (ct, mask)
            for name, others in sorted(_same_position(ordered).items()):
                yield _quarantine(pid, patient.image_files[name],
                                  f"same ImagePositionPatient as {', '.join(others)}: two slices at one position "
                                  f"(a duplicated file, or a second series mixed in)")
                bad.add(name)
                ordered[name] = (ordered[name][0], None)
            for name, reason in _geometry_problems(ordered, check_gaps=not bad):
                yield _quarantine(pid, patient.image_files[name], reason)
                bad.add(name)
                ordered[name] = (ordered[name][0], None)
            ordered = _with_slice_depth(ordered)
    except ircad.MemberError as e:
        yield _quarantine(pid, e.source, e.reason)
        yield _summary(pid, split, 1, 1, [])
        return
    in_order = sorted(ordered, key=lambda n: ordered[n][0].sort_key)
    ranked = [(index, *ordered[name]) for index, name in enumerate(in_order) if ordered[name][1] is not None]
    def built(row):
        serialized = _serialized_example(pid, *row)
        return deflate_record(serialized) if deflate else serialized

    for record in pool.map(built, ranked):
        yield split, record
    written, with_organ = len(ranked), sum(int(mask.mask.any()) for _, _, mask in ranked)
    log.info("ingest %s (%s): %d slices written, %d with %s, %d bad of %d, %d operating-system files skipped",
             pid, split, written, with_organ, organ, len(bad), max(len(names), 1), len(skipped))
    yield _summary(pid, split, len(names), len(bad), skipped, written, with_organ)


def _serialized_example(patient_id: str, slice_index: int, ct: ircad.CtSlice, mask: ircad.Mask) -> bytes:
    return serialized_slice_example(hu=ct.hu, mask=mask.mask, patient_id=patient_id, slice_index=slice_index,
                                    spacing_mm=ct.spacing_mm, thickness_mm=ct.thickness_mm,
                                    source_shape=ct.source_shape, mask_distinct_values=mask.distinct_values,
                                    source_mask=mask.source)


def _read_json_lines(pattern: str) -> list[dict]:
    return [json.loads(line) for path in sorted(tf.io.gfile.glob(pattern))
            for line in tf.io.gfile.GFile(path).read().splitlines() if line]


def check_bad_fraction(summaries: list[dict], quarantine: list[dict], max_bad_fraction: float) -> None:
    """Raises a CtsegError naming the worst patients and files when a patient has too many bad slices."""
    over = sorted((s for s in summaries if s["bad"] / s["slices"] > max_bad_fraction),
                  key=lambda s: (-s["bad"] / s["slices"], s["patient_id"]))
    if not over:
        return
    worst_patients = [s["patient_id"] for s in over]
    files = [q for pid in worst_patients for q in quarantine if q["patient_id"] == pid][:WORST_FILES_SHOWN]
    per_patient = ", ".join(f"{s['patient_id']} {s['bad']}/{s['slices']}" for s in over)
    raise CtsegError(
        f"too many bad slices (more than max_bad_fraction={max_bad_fraction:g} of a patient's): {per_patient}; "
        f"worst files: " + "; ".join(f"{q['file']} ({q['reason']})" for q in files)
        + f"; the log lists all {len(quarantine)} quarantined files. Fix or remove them, or raise max_bad_fraction "
        f"to keep the good slices (the report is then in {QUARANTINE_FILE} of the Examples artifact)")


class Executor(base_beam_executor.BaseBeamExecutor):
    """Reads the IRCAD layout at `data_root` into split Examples, quarantining bad files."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        data_root = exec_properties["data_root"]
        organ = exec_properties["organ"]
        size = check_image_size(exec_properties["image_size"])
        ratios = parse_split_ratios(exec_properties["split_ratios"])
        max_bad_fraction = float(exec_properties["max_bad_fraction"])
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        splits = list(ratios)
        examples.split_names = artifact_utils.encode_split_names(splits)
        examples.span = 0

        fingerprint = ircad.data_fingerprint(data_root)
        expected = exec_properties.get(FINGERPRINT_KEY) or ""
        if expected and not expected.startswith(ircad.UNREAD_PREFIX) and expected != fingerprint:
            log.warning("ingest %s: the data changed after the pipeline was built (fingerprint %s, now %s); "
                        "ingesting what is there now", data_root, expected, fingerprint)
        examples.set_string_custom_property(FINGERPRINT_KEY, fingerprint)
        skipped = []
        patients = ircad.find_patients(data_root, skipped)
        split_of = assign_splits([p.patient_id for p in patients], ratios)
        log.info("ingest %s: %d patients, splits %s", data_root, len(patients),
                 {s: sum(v == s for v in split_of.values()) for s in splits})
        tmp = os.path.join(self._get_tmp_dir(), "ingest")
        if tf.io.gfile.exists(tmp):  # reports of an earlier try in the same tmp dir would be counted twice
            tf.io.gfile.rmtree(tmp)
        with self._make_beam_pipeline() as pipeline:
            results = (pipeline
                       | "Patients" >> beam.Create([(p, split_of[p.patient_id]) for p in patients])
                       | "SpreadPatients" >> beam.Reshuffle()
                       | "Ingest" >> beam.FlatMap(lambda patient_split: ingest_patient(*patient_split, organ, size,
                                                                                      deflate=True))
                       .with_outputs(_QUARANTINE, _SUMMARY, main=EXAMPLES_KEY))
            by_split = results[EXAMPLES_KEY] | "BySplit" >> beam.Partition(
                lambda kv, _: splits.index(kv[0]), len(splits))
            for split, part in zip(splits, by_split):
                (part
                 | f"Serialized[{split}]" >> beam.Values()
                 | f"Write[{split}]" >> beam.io.Write(GzipTFRecordSink(
                     os.path.join(artifact_utils.get_split_uri([examples], split), "data_tfrecord"))))
            ([results[tag] | f"Keyed[{tag}]" >> beam.Map(lambda record, tag=tag: json.dumps({tag: record}))
              for tag in (_QUARANTINE, _SUMMARY)]
             | "Reports" >> beam.Flatten()  # one sink for both: each sink costs Beam stages of start-up
             | "WriteReports" >> beam.io.WriteToText(os.path.join(tmp, "report"), file_name_suffix=".jsonl"))

        report = _read_json_lines(os.path.join(tmp, "report*"))
        quarantine = sorted((r[_QUARANTINE] for r in report if _QUARANTINE in r),
                            key=lambda q: (q["patient_id"], q["file"]))
        summaries = [r[_SUMMARY] for r in report if _SUMMARY in r]
        skipped = [{"patient_id": "", "file": where} for where in skipped] + sorted(
            ({"patient_id": s["patient_id"], "file": where} for s in summaries for where in s["skipped"]),
            key=lambda r: (r["patient_id"], r["file"]))
        for name, records in ((QUARANTINE_FILE, quarantine), (SKIPPED_FILE, skipped)):
            with tf.io.gfile.GFile(os.path.join(examples.uri, name), "w") as f:
                f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        if skipped:
            log.info("ingest: skipped %d operating-system files (not counted as bad slices), listed in %s: %s",
                     len(skipped), SKIPPED_FILE, ", ".join(r["file"] for r in skipped[:WORST_FILES_SHOWN]))
        _record_counts(examples, data_root, splits, summaries, quarantine)
        examples.set_int_custom_property("skipped", len(skipped))
        check_bad_fraction(summaries, quarantine, max_bad_fraction)


def _record_counts(examples: types.Artifact, data_root: str, splits: list[str], summaries: list[dict],
                   quarantine: list[dict]) -> None:
    """Custom properties on the Examples artifact, visible in ML Metadata."""
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(examples, "tfrecords_gzip")
    examples.set_string_custom_property("data_root", data_root)
    examples.set_int_custom_property("patients", sum(s["written"] > 0 for s in summaries))
    for split in splits:
        examples.set_int_custom_property(f"slices_{split}", sum(s["written"] for s in summaries if s["split"] == split))
    examples.set_int_custom_property("slices_with_liver", sum(s["with_organ"] for s in summaries))
    examples.set_int_custom_property("quarantined", len(quarantine))
    log.info("ingest: %d slices written, %d files quarantined (%s)", sum(s["written"] for s in summaries),
             len(quarantine), os.path.join(examples.uri, QUARANTINE_FILE))
