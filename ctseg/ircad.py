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
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import os
import posixpath
import re
import shutil
import tempfile
import uuid
import zipfile
import zlib
from stat import S_ISFIFO, S_ISREG, S_ISSOCK
from typing import Iterator, Optional

import numpy as np

from ctseg import dicom, geometry
from ctseg.errors import CtsegError
from ctseg.object_stores import register_filesystems

IMAGES_DIR = "PATIENT_DICOM"
MASKS_DIR = "MASKS_DICOM"
HU_RANGE = (-32768.0, 32767.0)  # what the int16 example holds; anything outside would be clipped silently
# Limits on what a file or zip member may inflate to, so a small hostile zip cannot exhaust memory. A DICOM
# slice of IRCAD is 0.5 MiB and a patient's PATIENT_DICOM.zip about 100 MiB. Blank masks deflate about 1000:1,
# so the ratio is only checked on members big enough to matter.
MAX_MEMBER_BYTES = 1 << 30
MAX_COMPRESSION_RATIO = 200
RATIO_CHECKED_ABOVE_BYTES = 16 << 20
SPOOL_BYTES = 64 << 20  # an inner zip inside the outer zip is held in memory up to this, then in a temporary file
DEBRIS_NAMES = ("thumbs.db", "desktop.ini", "__macosx")  # with every dot-file (.DS_Store, ._image_0): skipped, listed


class MemberError(CtsegError):
    """A file or zip member that cannot be read safely; `source` names it, `reason` says why, for a person."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def is_debris(name: str) -> bool:
    """Operating-system files that are no part of a dataset (Windows thumbnails, macOS resource forks...)."""
    return name.startswith(".") or name.lower() in DEBRIS_NAMES


class _Tree:
    """What both trees share: skipping (and remembering) operating-system debris."""

    def __init__(self):
        # locations of debris (reason None) and of local entries that are not files, seen while listing, in order
        self.skipped: dict[str, Optional[str]] = {}

    def _listed(self, path: str, dirs, files) -> tuple[list[str], list[str]]:
        for name in sorted({*dirs, *files}):
            if is_debris(name):
                self.skipped[self.location(posixpath.join(path, name))] = None
        return sorted(d for d in dirs if not is_debris(d)), sorted(f for f in files if not is_debris(f))


def _check_size(location: str, size: int, compressed: Optional[int] = None) -> None:
    if size > MAX_MEMBER_BYTES:
        raise MemberError(location, f"inflates to {size >> 20} MiB, over the limit of {MAX_MEMBER_BYTES >> 20} MiB "
                                    f"for one file; not read")
    if compressed is not None and size > RATIO_CHECKED_ABOVE_BYTES and size > MAX_COMPRESSION_RATIO * max(compressed, 1):
        raise MemberError(location, f"inflates {compressed} bytes to {size >> 20} MiB, a compression ratio of "
                                    f"{size // max(compressed, 1)}:1, over the limit of {MAX_COMPRESSION_RATIO}:1 for "
                                    f"members over {RATIO_CHECKED_ABOVE_BYTES >> 20} MiB (a zip bomb?); not read")


class _FolderTree(_Tree):
    """A folder read through tf.io.gfile; paths are relative to its root, '' is the root."""

    def __init__(self, root: str):
        import tensorflow as tf

        register_filesystems(root)
        super().__init__()
        self._gfile = tf.io.gfile
        self.root = root.rstrip("/") or "/"

    def location(self, path: str) -> str:
        return posixpath.join(self.root, path) if path else self.root

    def entries(self, path: str) -> tuple[list[str], list[str]]:
        """(sub-folders, files) directly in `path`, sorted, debris and local non-files skipped."""
        _, dirs, files = next(iter(self._gfile.walk(self.location(path))), (None, [], []))
        dirs, files = self._listed(path, [d.rstrip("/") for d in dirs], files)
        if "://" in self.root:
            return dirs, files
        return dirs, [f for f in files if self._regular(posixpath.join(path, f))]

    def _regular(self, path: str) -> bool:
        """Whether a local entry is a regular file; anything else is skipped with the reason (a named pipe
        would block the read forever; a dangling or looping link has nothing to read)."""
        where = self.location(path)
        try:
            mode = os.stat(where).st_mode
        except OSError as e:
            reason = ("a symbolic link loop" if e.errno == errno.ELOOP else "a symbolic link to nothing"
                      if os.path.islink(where) else (e.strerror or type(e).__name__).lower())
            self.skipped[where] = f"cannot be read: {reason}"
            return False
        if not S_ISREG(mode):
            kind = ("a named pipe (FIFO)" if S_ISFIFO(mode) else "a socket" if S_ISSOCK(mode)
                    else "a device")
            self.skipped[where] = f"{kind}, not a file"
            return False
        return True

    def open(self, path: str):
        """The file, unread (local files through the builtin open, a few times faster than GFile)."""
        where = self.location(path)
        _check_size(where, self._gfile.stat(where).length if "://" in self.root else os.path.getsize(where))
        return open(where, "rb") if "://" not in self.root else self._gfile.GFile(where, "rb")

    def read(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()


def _unsafe_name(name: str) -> Optional[str]:
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "climbs out of the archive with .."
    return None


class _ZipTree(_Tree):
    """A zip archive seen as folders; member paths are relative to the archive's root."""

    def __init__(self, archive: zipfile.ZipFile, label: str):
        super().__init__()
        self._zip = archive
        self.label = label
        for name in archive.namelist():
            if _unsafe_name(name):
                raise MemberError(label, f"member {name!r} {_unsafe_name(name)}; refusing the archive")
        self._files = {n.rstrip("/"): n for n in archive.namelist() if not n.endswith("/")}
        self._dirs = {""}
        for name in [*self._files, *(n.rstrip("/") for n in archive.namelist() if n.endswith("/"))]:
            parts = name.split("/")
            self._dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))

    def location(self, path: str) -> str:
        return f"{self.label}!{path}" if path else self.label

    def entries(self, path: str) -> tuple[list[str], list[str]]:
        dirs = [posixpath.basename(d) for d in self._dirs if d and posixpath.dirname(d) == path]
        files = [posixpath.basename(f) for f in self._files if posixpath.dirname(f) == path]
        return self._listed(path, dirs, files)

    def _info(self, path: str) -> zipfile.ZipInfo:
        info = self._zip.getinfo(self._files[path])
        _check_size(self.location(path), info.file_size, info.compress_size)
        return info

    def read(self, path: str) -> bytes:
        info = self._info(path)
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise MemberError(self.location(path), f"damaged zip member ({e})") from e

    def open(self, path: str):
        """The member as a seekable file: in memory up to SPOOL_BYTES, beyond that in a temporary file."""
        info = self._info(path)
        if info.file_size <= SPOOL_BYTES:
            return io.BytesIO(self.read(path))
        spool = tempfile.TemporaryFile()  # Python 3.10's SpooledTemporaryFile is not seekable() for zipfile
        try:
            with self._zip.open(info) as member:
                shutil.copyfileobj(member, spool, 1 << 20)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            spool.close()
            raise MemberError(self.location(path), f"damaged zip member ({e})") from e
        spool.seek(0)
        return spool


@contextlib.contextmanager
def open_tree(root: str):
    """The folder or zip at `root` as a tree; a CtsegError when it is neither."""
    import tensorflow as tf

    register_filesystems(root)
    if not tf.io.gfile.exists(root):
        raise CtsegError(f"data root {root} does not exist")
    if tf.io.gfile.isdir(root):
        yield _FolderTree(root)
        return
    with contextlib.ExitStack() as stack:
        # The builtin open for local files: tf.io.gfile cannot seek back from the end of a tiny file.
        f = stack.enter_context(open(root, "rb") if "://" not in root else tf.io.gfile.GFile(root, "rb"))
        try:
            archive = stack.enter_context(zipfile.ZipFile(f))
        except (zipfile.BadZipFile, tf.errors.OpError, OSError) as e:
            raise CtsegError(f"{root} is neither a folder nor a readable zip archive ({e})") from e
        yield _ZipTree(archive, root)


UNREAD_PREFIX = "unread:"  # a fingerprint taken where the data could not be read: unique, so never cached


def build_fingerprint(data_root: str) -> str:
    """The data's fingerprint now or, when it cannot be read from here, one unique to this call, never cached."""
    try:
        return data_fingerprint(data_root)
    except CtsegError:
        return f"{UNREAD_PREFIX} {uuid.uuid4().hex}"


def data_fingerprint(data_root: str) -> str:
    """What the data at `data_root` is, cheaply: its files' paths, sizes and modification times, hashed.

    Like TFX's FileBasedExampleGen (`tfx/utils/io_utils.py` `generate_fingerprint`, TFX 1.15.1 lines
    202-220: file count, total bytes and mtimes), but per file, so that replacing one patient's data
    by another's of the same size and second also changes it (mtimes to the nanosecond where the
    filesystem keeps them). A zip is one file. A CtsegError when `data_root` cannot be read.
    """
    import tensorflow as tf

    register_filesystems(data_root)
    try:
        if not tf.io.gfile.exists(data_root):
            raise CtsegError(f"data root {data_root} does not exist")
        root = data_root.rstrip("/") or "/"
        if tf.io.gfile.isdir(root):
            paths = sorted(posixpath.join(folder, f)[len(root) + 1:] for folder, _, files in tf.io.gfile.walk(root)
                           for f in files)
        else:
            root, paths = posixpath.dirname(root), [posixpath.basename(root)]
        digest, total = hashlib.sha256(), 0
        for rel in paths:
            where = posixpath.join(root, rel)
            if "://" in where:
                stat = tf.io.gfile.stat(where)
                size, mtime_ns = stat.length, stat.mtime_nsec
            else:
                stat = os.stat(where)
                size, mtime_ns = stat.st_size, stat.st_mtime_ns
            total += size
            digest.update(f"{rel}\0{size}\0{mtime_ns}\n".encode())
    except (tf.errors.OpError, OSError) as e:
        raise CtsegError(f"cannot list {data_root} to fingerprint it ({e})") from e
    return f"files:{len(paths)},bytes:{total},sha256:{digest.hexdigest()[:16]}"


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


def _open_inner_zip(tree, zip_path: str, stack: contextlib.ExitStack) -> _ZipTree:
    """An inner zip as a tree, read from its file (a folder's) or a spooled copy (the outer zip's), never whole."""
    location = tree.location(zip_path)
    f = stack.enter_context(tree.open(zip_path))
    try:
        archive = stack.enter_context(zipfile.ZipFile(f))
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise MemberError(location, f"not a readable zip archive ({e})") from e
    return _ZipTree(archive, location)


def _open_series(tree, patient_path: str, stack: contextlib.ExitStack, *parts: str) -> Optional[Series]:
    """`patient/PART/...` as a folder, or inside `patient/PART.zip` (whose members may or may not start with PART/)."""
    head, rest = parts[0], list(parts[1:])
    dirs, files = tree.entries(patient_path)
    if head in dirs:
        base_tree, base = tree, posixpath.join(patient_path, head)
    elif f"{head}.zip" in files:
        base_tree = _open_inner_zip(tree, posixpath.join(patient_path, f"{head}.zip"), stack)
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


@dataclasses.dataclass
class CtSlice:
    """A decoded CT slice resized for the model, with what ordering and the example need from its header."""
    hu: np.ndarray                 # float32 (size, size)
    sort_key: tuple
    spacing_mm: float
    thickness_mm: float
    source_shape: tuple[int, int]


def _not_an_axial_slice(ds) -> Optional[str]:
    """`ctseg.geometry`'s rules for one slice, as `ctseg predict` applies them: a localizer or a slice that
    is not axial is no training slice."""
    if geometry.is_localizer(ds):
        return "a localizer (ImageType LOCALIZER), not a slice of the series"
    return geometry.not_axial(ds)


def _facing(ds, pixels: np.ndarray) -> np.ndarray:
    """The slice or mask turned as the model reads it (`ctseg.geometry.in_plane_flips`), as predict turns it."""
    flip_rows, flip_cols = geometry.in_plane_flips(ds)
    return pixels[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def decode_slice(data: bytes, location: str, size: int) -> CtSlice:
    """DICOM bytes → HU resized to (size, size); a DicomError naming `location` when the file is unusable."""
    ds = dicom.read_dataset(data, location)
    not_a_slice = dicom.not_single_frame(ds) or _not_an_axial_slice(ds)
    if not_a_slice:
        raise dicom.DicomError(location, not_a_slice)
    stored = _facing(ds, dicom.pixel_array(ds, location))
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
    ds = dicom.read_dataset(data, location)
    stored = _facing(ds, dicom.pixel_array(ds, location))
    source = (stored != 0).astype(np.uint8)
    return Mask(dicom.resize_mask(source, size), dicom.distinct_values(stored), stored.shape, source)
