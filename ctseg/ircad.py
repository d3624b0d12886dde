"""Finding and reading 3D-IRCADb-01 patients, from the extracted folder or the published nested zips.

Accepted layouts (any path `tf.io.gfile` reads, so `gs://` works too):

- the extracted folder: `ROOT/<patient>/PATIENT_DICOM/image_N`, `ROOT/<patient>/MASKS_DICOM/<organ>/image_N`;
- the folder after extracting only the outer zip: `ROOT/<patient>/PATIENT_DICOM.zip`, `MASKS_DICOM.zip`;
- `3Dircadb1.zip` itself: `3Dircadb1/<patient>/PATIENT_DICOM.zip` and `MASKS_DICOM.zip`, read in memory.

A single wrapper folder (`3Dircadb1/`) above the patients is looked through. Every other folder at
the patients' level is a patient, named by its folder (`3Dircadb1.1`...); operating-system debris
(dot-files, `__MACOSX/`, `Thumbs.db`, `desktop.ini`) is skipped and remembered for the report. Locations
inside zips are written `outer.zip!inner/path.zip!member`. Hostile archives are refused with the
member named: absolute or `..` member names, members over MAX_MEMBER_BYTES or, above
RATIO_CHECKED_ABOVE_BYTES, a compression ratio over MAX_COMPRESSION_RATIO.

The seams live in their own modules: the tree over folders and nested zips (`ctseg.datatree`), the
archive limits (`ctseg.zip_limits`), the data's fingerprint (`ctseg.fingerprint`) and the decoding of
slices and masks (`ctseg.slice_decode`); this module finds patients and their series. Their public
names are importable from here too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import posixpath
from typing import Iterator, Optional

from ctseg import datatree
from ctseg.datatree import open_tree
from ctseg.errors import CtsegError
from ctseg.fingerprint import UNREAD_PREFIX, build_fingerprint, data_fingerprint  # noqa: F401
from ctseg.slice_decode import CtSlice, Mask, decode_mask, decode_slice  # noqa: F401
from ctseg.zip_limits import MAX_COMPRESSION_RATIO, MAX_MEMBER_BYTES, MemberError  # noqa: F401

SPOOL_BYTES = datatree.SPOOL_BYTES
IMAGES_DIR = "PATIENT_DICOM"
MASKS_DIR = "MASKS_DICOM"


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


def find_patients(data_root: str, skipped: Optional[list[str]] = None) -> list[PatientRef]:
    """Lists the patients under `data_root` (folder or zip), sorted by id; a CtsegError when there are none.

    Operating-system debris met on the way (`__MACOSX/`, `Thumbs.db`...) is appended to `skipped`.
    """
    with open_tree(data_root) as tree:
        parent = _patients_folder(tree)
        dirs, _ = tree.entries(parent)
        if skipped is not None:
            skipped.extend(tree.skipped)
    if not dirs:
        raise CtsegError(f"no patients in {data_root}: no patient folders found; expected <patient>/{IMAGES_DIR} "
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


def _open_series(tree, patient_path: str, stack: contextlib.ExitStack, *parts: str) -> Optional[Series]:
    """`patient/PART/...` as a folder, or inside `patient/PART.zip` (whose members may or may not start with PART/)."""
    head, rest = parts[0], list(parts[1:])
    dirs, files = tree.entries(patient_path)
    if head in dirs:
        base_tree, base = tree, posixpath.join(patient_path, head)
    elif f"{head}.zip" in files:
        base_tree = datatree.open_inner_zip(tree, posixpath.join(patient_path, f"{head}.zip"), stack)
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
    skipped: list[str] = dataclasses.field(default_factory=list)  # operating-system debris, not read

    @property
    def image_files(self) -> dict[str, str]:
        return self.images.files if self.images else {}

    @property
    def mask_files(self) -> dict[str, str]:
        return self.masks.files if self.masks else {}


@contextlib.contextmanager
def open_patient(ref: PatientRef, organ: str) -> Iterator[PatientSeries]:
    """Opens a patient's PATIENT_DICOM and MASKS_DICOM/<organ> series (listing only; files are read on demand).

    A MemberError names an inner zip that cannot be opened (damaged, unsafe names, over the limits).
    """
    with open_tree(ref.data_root) as tree, contextlib.ExitStack() as stack:
        images = _open_series(tree, ref.path, stack, IMAGES_DIR)
        masks = _open_series(tree, ref.path, stack, MASKS_DIR, organ)
        skipped = [where for t in {id(s.tree): s.tree for s in (images, masks) if s}.values() if t is not tree
                   for where in t.skipped]
        yield PatientSeries(ref, tree.location(ref.path), images, masks, [*tree.skipped, *skipped])


def read_series(path: str, skipped: Optional[list[str]] = None) -> dict[str, bytes]:
    """Every file of one image series, by file name: a patient folder or zip (its PATIENT_DICOM), a
    PATIENT_DICOM folder, a PATIENT_DICOM.zip, or any folder of DICOM files. For `ctseg predict`.

    Entries that are not files (named pipes, dangling links) are appended to `skipped` as
    "location: reason"; a file that cannot be read is a MemberError naming it.
    """
    with open_tree(path) as tree, contextlib.ExitStack() as stack:
        series = _open_series(tree, "", stack, IMAGES_DIR)
        if series is None:
            _, names = tree.entries("")
            series = Series(tree, "", {n: tree.location(n) for n in names})
        if skipped is not None:
            skipped.extend(f"{where}: {reason}" for t in {id(tree): tree, id(series.tree): series.tree}.values()
                           for where, reason in t.skipped.items() if reason)
        if not series.files:
            raise CtsegError(f"no DICOM files found in {path}")
        return {name: _read(series, name) for name in series.files}


def _read(series: Series, name: str) -> bytes:
    try:
        return series.read(name)
    except OSError as e:
        raise MemberError(series.files[name], f"cannot be read ({(e.strerror or type(e).__name__).lower()})") from e
