"""Hostile and broken input to ingest: hangs, memory, bad DICOM that must not skip quarantine."""
import contextlib
import io
import json
import os
import shutil
import signal
import zipfile
from pathlib import Path

import pydicom
import pytest
import tensorflow as tf

from ctseg import ircad
from ctseg.components.ingest.component import IrcadExampleGen
from ctseg.errors import CtsegError
from ctseg.features import MAX_IMAGE_SIZE, decode_example


@contextlib.contextmanager
def _deadline(seconds: int):
    """Turns a hang into a failure: the alarm interrupts a Python loop between bytecodes."""
    def _expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _examples(examples) -> list[dict]:
    files = sorted(str(p) for p in Path(examples.uri).glob("Split-*/*.gz"))
    return [decode_example(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _report(examples, name="quarantine.jsonl") -> list[dict]:
    return [json.loads(line) for line in (Path(examples.uri) / name).read_text().splitlines()]


def _zip(target, members: dict[str, bytes]):
    """Writes `members` into a zip at `target` (a path or a BytesIO) and returns `target`."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return target


# ---- hangs and memory


def test_absolute_and_parent_member_names_are_refused_not_looped_on(small_phantom_zip, tmp_path):
    for odd in ("/tmp/x", "3Dircadb1/../../etc/passwd"):
        bad = tmp_path / "odd.zip"
        shutil.copy(small_phantom_zip, bad)
        with zipfile.ZipFile(bad, "a") as z:
            z.writestr(odd, b"x")
        refused = rf"{bad}.*member '{odd}'.*absolute|{bad}.*member '{odd}'.*\.\."
        with _deadline(60), pytest.raises(CtsegError, match=refused):
            ircad.find_patients(str(bad))


@pytest.fixture(scope="module")
def bomb_patient(small_phantom, tmp_path_factory):
    """A patient whose PATIENT_DICOM.zip is 2 MB holding a 1.5 GiB member (zeros), and one whose inner zip is a
    bomb below the size limit (ratio ~1000)."""
    root = tmp_path_factory.mktemp("bomb") / "ircad"
    for pid, giga in (("3Dircadb1.1", 1.5), ("3Dircadb1.2", 0.1)):
        shutil.copytree(small_phantom / pid / "MASKS_DICOM", root / pid / "MASKS_DICOM")
        with zipfile.ZipFile(root / pid / "PATIENT_DICOM.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            with z.open("PATIENT_DICOM/image_0", "w", force_zip64=True) as f:
                chunk = bytes(1 << 24)
                for _ in range(int(giga * 64)):
                    f.write(chunk)
    return root


def test_oversized_or_highly_compressed_members_are_refused_naming_them(bomb_patient, tmp_path, run_ingest):
    big, ratio = (bomb_patient / p / "PATIENT_DICOM.zip" for p in ("3Dircadb1.1", "3Dircadb1.2"))
    assert big.stat().st_size < 10 << 20
    with pytest.raises(CtsegError, match=rf"{big}!PATIENT_DICOM/image_0: inflates to 1536 MiB, over the limit of "
                                         rf"{ircad.MAX_MEMBER_BYTES >> 20} MiB"):
        ircad.read_series(str(big))
    with pytest.raises(CtsegError, match=rf"{ratio}!PATIENT_DICOM/image_0: .*compression ratio of \d+:1, over the "
                                         rf"limit of {ircad.MAX_COMPRESSION_RATIO}:1"):
        ircad.read_series(str(ratio))
    examples = run_ingest(tmp_path, bomb_patient)
    reasons = {Path(q["file"]).relative_to(bomb_patient).as_posix(): q["reason"] for q in _report(examples)}
    assert "over the limit" in reasons["3Dircadb1.1/PATIENT_DICOM.zip!PATIENT_DICOM/image_0"]
    assert "compression ratio" in reasons["3Dircadb1.2/PATIENT_DICOM.zip!PATIENT_DICOM/image_0"]


def test_inner_zips_of_a_folder_are_read_from_disk_not_memory(small_phantom_zip, tmp_path):
    """The folder after extracting the outer zip: inner zips are opened as files, never read whole."""
    with zipfile.ZipFile(small_phantom_zip) as z:
        z.extractall(tmp_path)
    [ref, *_] = ircad.find_patients(str(tmp_path / "3Dircadb1"))
    with ircad.open_patient(ref, "liver") as patient:
        assert isinstance(patient.images.tree._zip.fp, io.BufferedReader)
        data = patient.images.read("image_0")
    assert pydicom.dcmread(io.BytesIO(data)).Rows == 64


def test_a_large_inner_zip_inside_the_outer_zip_goes_to_a_temporary_file(small_phantom, tmp_path):
    """Over SPOOL_BYTES an inner zip is copied to a temporary file, not held in memory, and still reads right."""
    image = (small_phantom / "3Dircadb1.1/PATIENT_DICOM/image_0").read_bytes()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_STORED) as z:
        z.writestr("PATIENT_DICOM/image_0", image)
        z.writestr("PATIENT_DICOM/padding.bin", os.urandom(ircad.SPOOL_BYTES + (1 << 20)))
    empty = _zip(io.BytesIO(), {}).getvalue()
    outer = _zip(tmp_path / "3Dircadb1.zip", {"3Dircadb1/3Dircadb1.1/PATIENT_DICOM.zip": inner.getvalue(),
                                              "3Dircadb1/3Dircadb1.1/MASKS_DICOM.zip": empty})
    [ref] = ircad.find_patients(str(outer))
    with ircad.open_patient(ref, "liver") as patient:
        assert not isinstance(patient.images.tree._zip.fp, io.BytesIO)
        assert patient.images.read("image_0") == image


def test_image_size_has_an_upper_bound_in_the_component_and_the_executor(small_phantom, tmp_path, run_ingest):
    with pytest.raises(CtsegError, match=rf"image_size must be between 8 and {MAX_IMAGE_SIZE}.*100000"):
        IrcadExampleGen(data_root=str(small_phantom), image_size=100000)
    with _deadline(120), pytest.raises(CtsegError, match=rf"image_size.*{MAX_IMAGE_SIZE}"):
        run_ingest(tmp_path, small_phantom, image_size=100000)


# ---- bad DICOM that must go to quarantine


@pytest.fixture(scope="module")
def hostile(small_phantom, small_phantom_zip, tmp_path_factory):
    """Patient 1 with OS debris, patient 2 (outer zip extracted) with a corrupt PATIENT_DICOM.zip, patient 3 with
    a Rows=0 slice and two slices at one ImagePositionPatient."""
    root = tmp_path_factory.mktemp("hostile") / "ircad"
    shutil.copytree(small_phantom / "3Dircadb1.1", root / "3Dircadb1.1")
    for debris in ("Thumbs.db", ".DS_Store", "desktop.ini"):
        (root / "3Dircadb1.1/PATIENT_DICOM" / debris).write_bytes(b"\0\1junk")
    (root / "__MACOSX/3Dircadb1.1").mkdir(parents=True)
    (root / "__MACOSX/3Dircadb1.1/._image_0").write_bytes(b"\0\5\26\7")
    with zipfile.ZipFile(small_phantom_zip) as z:
        for part in ("PATIENT_DICOM", "MASKS_DICOM"):
            (root / "3Dircadb1.2").mkdir(exist_ok=True)
            (root / f"3Dircadb1.2/{part}.zip").write_bytes(z.read(f"3Dircadb1/3Dircadb1.2/{part}.zip"))
    inner = root / "3Dircadb1.2/PATIENT_DICOM.zip"
    inner.write_bytes(inner.read_bytes()[: inner.stat().st_size // 2])
    shutil.copytree(small_phantom / "3Dircadb1.3", root / "3Dircadb1.3")
    images = root / "3Dircadb1.3/PATIENT_DICOM"
    ds = pydicom.dcmread(images / "image_1")
    ds.Rows, ds.PixelData = 0, b""
    ds.save_as(images / "image_1")
    ds = pydicom.dcmread(images / "image_3")
    ds.ImagePositionPatient = pydicom.dcmread(images / "image_2").ImagePositionPatient
    ds.save_as(images / "image_3")
    return root


@pytest.fixture(scope="module")
def hostile_run(hostile, tmp_path_factory, run_ingest):
    examples = run_ingest(tmp_path_factory.mktemp("hostile_run"), hostile)
    return examples, {(q["patient_id"], Path(q["file"]).relative_to(hostile).as_posix()): q["reason"]
                      for q in _report(examples)}


def test_corrupt_inner_zip_is_quarantined_naming_it(hostile_run):
    _, reasons = hostile_run
    assert "not a readable zip" in reasons[("3Dircadb1.2", "3Dircadb1.2/PATIENT_DICOM.zip")]


def test_corrupt_inner_zip_fails_the_run_naming_it_under_the_default_policy(hostile, tmp_path, run_ingest):
    with pytest.raises(CtsegError, match=r"3Dircadb1.2 1/1.*3Dircadb1.2/PATIENT_DICOM.zip \(not a readable zip"):
        run_ingest(tmp_path, hostile, max_bad_fraction=0.0)


def test_zero_rows_slice_is_quarantined(hostile_run):
    _, reasons = hostile_run
    assert "0 rows" in reasons[("3Dircadb1.3", "3Dircadb1.3/PATIENT_DICOM/image_1")]


def _slices(patient_dir: Path) -> int:
    return len([f for f in (patient_dir / "PATIENT_DICOM").iterdir() if f.name.startswith("image_")])


def test_slices_sharing_an_image_position_are_quarantined(hostile_run, hostile):
    examples, reasons = hostile_run
    for name, other in (("image_2", "image_3"), ("image_3", "image_2")):
        assert f"same ImagePositionPatient as {other}" in reasons[("3Dircadb1.3", f"3Dircadb1.3/PATIENT_DICOM/{name}")]
    p3 = [e for e in _examples(examples) if e["patient_id"] == "3Dircadb1.3"]
    assert len(p3) == _slices(hostile / "3Dircadb1.3") - 3


def test_operating_system_debris_is_listed_not_counted(hostile_run, hostile):
    examples, reasons = hostile_run
    assert not [f for pid, f in reasons if pid == "3Dircadb1.1"]
    assert len([e for e in _examples(examples) if e["patient_id"] == "3Dircadb1.1"]) == _slices(hostile / "3Dircadb1.1")
    skipped = {Path(s["file"]).name for s in _report(examples, "skipped.jsonl")}
    assert skipped >= {"Thumbs.db", ".DS_Store", "desktop.ini", "__MACOSX"}
    assert examples.get_int_custom_property("skipped") == len(_report(examples, "skipped.jsonl"))
    assert examples.get_int_custom_property("quarantined") == len(reasons) == 1 + 1 + 2


def test_empty_zip_says_there_are_no_patients_in_it(tmp_path):
    empty = _zip(tmp_path / "empty.zip", {})
    with pytest.raises(CtsegError, match=rf"no patients in {empty}"):
        ircad.find_patients(str(empty))
    debris_only = _zip(tmp_path / "debris.zip", {"__MACOSX/._x": b"", "Thumbs.db": b""})
    with pytest.raises(CtsegError, match=rf"no patients in {debris_only}"):
        ircad.find_patients(str(debris_only))
