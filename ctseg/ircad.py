"""Finding and reading 3D-IRCADb-01 patients, from the extracted folder or the published nested zips.

Accepted layouts (any path `tf.io.gfile` reads, so `gs://` works too):

- the extracted folder: `ROOT/<patient>/PATIENT_DICOM/image_N`, `ROOT/<patient>/MASKS_DICOM/<organ>/image_N`;
- the folder after extracting only the outer zip: `ROOT/<patient>/PATIENT_DICOM.zip`, `MASKS_DICOM.zip`;
- `3Dircadb1.zip` itself: `3Dircadb1/<patient>/PATIENT_DICOM.zip` and `MASKS_DICOM.zip`, read in memory.

A single wrapper folder (`3Dircadb1/`) above the patients is looked through. Every other folder at
the patients' level is a patient, named by its folder (`3Dircadb1.1`...); hidden entries and macOS
`__MACOSX` folders are skipped. Locations inside zips are written `outer.zip!inner/path.zip!member`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import posixpath
import zipfile
from typing import Iterator, Optional

import numpy as np

from ctseg import dicom
from ctseg.errors import CtsegError

IMAGES_DIR = "PATIENT_DICOM"
MASKS_DIR = "MASKS_DICOM"
HU_RANGE = (-32768.0, 32767.0)  # what the int16 example holds; anything outside would be clipped silently


def _skipped(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


class _FolderTree:
    """A folder read through tf.io.gfile; paths are relative to its root, '' is the root."""

    def __init__(self, root: str):
        import tensorflow as tf

        self._gfile = tf.io.gfile
        self.root = root.rstrip("/") or "/"

    def location(self, path: str) -> str:
        return posixpath.join(self.root, path) if path else self.root

    def entries(self, path: str) -> tuple[list[str], list[str]]:
        """(sub-folders, files) directly in `path`, sorted, hidden entries skipped."""
        _, dirs, files = next(iter(self._gfile.walk(self.location(path))), (None, [], []))
        return (sorted(d.rstrip("/") for d in dirs if not _skipped(d.rstrip("/"))),
                sorted(f for f in files if not _skipped(f)))

    def read(self, path: str) -> bytes:
        if "://" not in self.root:  # local files: the builtin open is a few times faster than GFile
            with open(self.location(path), "rb") as f:
                return f.read()
        with self._gfile.GFile(self.location(path), "rb") as f:
            return f.read()


class _ZipTree:
    """A zip archive seen as folders; member paths are relative to the archive's root."""

    def __init__(self, archive: zipfile.ZipFile, label: str):
        self._zip = archive
        self.label = label
        self._files = {n.rstrip("/"): n for n in archive.namelist() if not n.endswith("/")}
        self._dirs = {posixpath.dirname(n) for n in self._files}
        for d in list(self._dirs):
            while d:
                d = posixpath.dirname(d)
                self._dirs.add(d)

    def location(self, path: str) -> str:
        return f"{self.label}!{path}" if path else self.label

    def entries(self, path: str) -> tuple[list[str], list[str]]:
        dirs = sorted(posixpath.basename(d) for d in self._dirs if d and posixpath.dirname(d) == path)
        files = sorted(posixpath.basename(f) for f in self._files if posixpath.dirname(f) == path)
        return [d for d in dirs if not _skipped(d)], [f for f in files if not _skipped(f)]

    def read(self, path: str) -> bytes:
        return self._zip.read(self._files[path])


@contextlib.contextmanager
def open_tree(root: str):
    """The folder or zip at `root` as a tree; a CtsegError when it is neither."""
    import tensorflow as tf

    if not tf.io.gfile.exists(root):
        raise CtsegError(f"data root {root} does not exist")
    if tf.io.gfile.isdir(root):
        yield _FolderTree(root)
        return
    with tf.io.gfile.GFile(root, "rb") as f:
        try:
            archive = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, tf.errors.OpError, OSError) as e:  # tf.io.gfile raises OpError seeking a tiny file
            raise CtsegError(f"{root} is neither a folder nor a readable zip archive ({e})") from e
        with archive:
            yield _ZipTree(archive, root)


def _patients_folder(tree) -> str:
    """The folder holding the patients: the root, or the single wrapper folder below it (`3Dircadb1/`)."""
    path = ""
    for _ in range(2):
        dirs, _ = tree.entries(path)
        if len(dirs) != 1 or _series_names(tree, posixpath.join(path, dirs[0])):
            break
        below = posixpath.join(path, dirs[0])
        if not any(_series_names(tree, posixpath.join(below, d)) for d in tree.entries(below)[0]):
            break
        path = below
    return path


def _series_names(tree, patient_path: str) -> set[str]:
    dirs, files = tree.entries(patient_path)
    names = set(dirs) | {f[:-4] for f in files if f.lower().endswith(".zip")}
    return names & {IMAGES_DIR, MASKS_DIR}


@dataclasses.dataclass(frozen=True)
class PatientRef:
    """Where one patient is: `path` is its folder inside `data_root` (a folder or a zip)."""
    patient_id: str
    data_root: str
    path: str


def find_patients(data_root: str) -> list[PatientRef]:
    """Lists the patients under `data_root` (folder or zip), sorted by id; a CtsegError when there are none."""
    with open_tree(data_root) as tree:
        parent = _patients_folder(tree)
        dirs, _ = tree.entries(parent)
    if not dirs:
        raise CtsegError(f"no patient folders found in {data_root}; expected <patient>/{IMAGES_DIR} "
                         f"and <patient>/{MASKS_DIR} (the 3D-IRCADb-01 layout)")
    return [PatientRef(d, data_root, posixpath.join(parent, d)) for d in dirs]


@dataclasses.dataclass
class Series:
    """The files of one series folder: slice file name → location (for messages), read on demand."""
    tree: object
    path: str
    files: dict[str, str]

    def read(self, name: str) -> bytes:
        return self.tree.read(posixpath.join(self.path, name))


def _open_series(tree, patient_path: str, *parts: str) -> Optional[Series]:
    """`patient/PART/...` as a folder, or inside `patient/PART.zip` (whose members may or may not start with PART/)."""
    head, rest = parts[0], list(parts[1:])
    dirs, files = tree.entries(patient_path)
    if head in dirs:
        base_tree, base = tree, posixpath.join(patient_path, head)
    elif f"{head}.zip" in files:
        zip_path = posixpath.join(patient_path, f"{head}.zip")
        inner = zipfile.ZipFile(io.BytesIO(tree.read(zip_path)))
        base_tree = _ZipTree(inner, tree.location(zip_path))
        base = head if head in base_tree.entries("")[0] else ""
    else:
        return None
    for part in rest:
        if part not in base_tree.entries(base)[0]:
            return None
        base = posixpath.join(base, part)
    _, names = base_tree.entries(base)
    return Series(base_tree, base, {n: base_tree.location(posixpath.join(base, n)) for n in names})


@dataclasses.dataclass
class PatientSeries:
    """One patient's image series and organ-mask series; None where the folder is missing."""
    ref: PatientRef
    location: str
    images: Optional[Series]
    masks: Optional[Series]

    @property
    def image_files(self) -> dict[str, str]:
        return self.images.files if self.images else {}

    @property
    def mask_files(self) -> dict[str, str]:
        return self.masks.files if self.masks else {}


@contextlib.contextmanager
def open_patient(ref: PatientRef, organ: str) -> Iterator[PatientSeries]:
    """Opens a patient's PATIENT_DICOM and MASKS_DICOM/<organ> series (listing only; files are read on demand)."""
    with open_tree(ref.data_root) as tree:
        yield PatientSeries(ref, tree.location(ref.path), _open_series(tree, ref.path, IMAGES_DIR),
                            _open_series(tree, ref.path, MASKS_DIR, organ))


def read_series(path: str) -> dict[str, bytes]:
    """Every file of one image series, by file name: a patient folder or zip (its PATIENT_DICOM), a
    PATIENT_DICOM folder, a PATIENT_DICOM.zip, or any folder of DICOM files. For `ctseg predict`."""
    with open_tree(path) as tree:
        series = _open_series(tree, "", IMAGES_DIR)
        if series is None:
            _, names = tree.entries("")
            series = Series(tree, "", {n: tree.location(n) for n in names})
        if series is None or not series.files:
            raise CtsegError(f"no DICOM files found in {path}")
        return {name: series.read(name) for name in series.files}


@dataclasses.dataclass
class CtSlice:
    """A decoded CT slice resized for the model, with what ordering and the example need from its header."""
    hu: np.ndarray                 # float32 (size, size)
    sort_key: tuple
    spacing_mm: float
    thickness_mm: float
    source_shape: tuple[int, int]


def decode_slice(data: bytes, location: str, size: int) -> CtSlice:
    """DICOM bytes → HU resized to (size, size); a DicomError naming `location` when the file is unusable."""
    ds = dicom.read_dataset(data, location)
    stored = dicom.pixel_array(ds, location)
    slope, intercept = dicom.rescale(ds)
    lo, hi = sorted((float(stored.min()) * slope + intercept, float(stored.max()) * slope + intercept))
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise dicom.DicomError(location, f"values {lo:.0f}..{hi:.0f} after RescaleSlope/Intercept are outside "
                                         f"the int16 range of Hounsfield units; not a CT slice")
    # Resampling commutes with the rescale (its weights sum to 1), so it runs on the smaller slice.
    hu = dicom.resize_hu(stored, size) * np.float32(slope) + np.float32(intercept)
    return CtSlice(hu, dicom.slice_sort_key(ds, location), dicom.spacing_mm(ds)[0], dicom.thickness_mm(ds),
                   stored.shape)


@dataclasses.dataclass
class Mask:
    mask: np.ndarray               # uint8 0/1 (size, size)
    distinct_values: int           # distinct stored values before binarising
    source_shape: tuple[int, int]
    source: np.ndarray             # uint8 0/1 at source_shape: the ground truth for source-resolution scores


def decode_mask(data: bytes, location: str, size: int) -> Mask:
    """Mask DICOM bytes → binary (non-zero → 1) mask resized by nearest neighbour; odd stored values are counted, not rejected."""
    stored = dicom.pixel_array(dicom.read_dataset(data, location), location)
    source = (stored != 0).astype(np.uint8)
    return Mask(dicom.resize_mask(source, size), dicom.distinct_values(stored), stored.shape, source)
