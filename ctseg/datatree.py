"""A folder or a zip archive, with zips nested in it, seen as one tree of folders and files.

Any path `tf.io.gfile` reads works (`gs://` too). Locations inside zips are written
`outer.zip!inner/path.zip!member`. Operating-system debris (dot-files, `__MACOSX/`, `Thumbs.db`,
`desktop.ini`) and local entries that are not files are skipped and remembered for the report. Every
read keeps the limits of `ctseg.zip_limits`.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import shutil
import struct
import tempfile
import zipfile
import zlib
from stat import S_ISFIFO, S_ISREG, S_ISSOCK
from typing import Optional

from isal import isal_zlib

from ctseg.errors import CtsegError
from ctseg.object_stores import register_filesystems
from ctseg.zip_limits import MemberError, check_size, unsafe_name

SPOOL_BYTES = 64 << 20  # an inner zip inside the outer zip is held in memory up to this, then in a temporary file
DEBRIS_NAMES = ("thumbs.db", "desktop.ini", "__macosx")  # with every dot-file (.DS_Store, ._image_0): skipped, listed
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # a zip member's local file header: signature, name and extra lengths
# General-purpose flags a member may carry and still be read in one piece: deflate's speed options (bits 1-2),
# sizes in a data descriptor (bit 3; the central directory has them too) and UTF-8 names (bit 11).
_PLAIN_FLAGS = 0x0002 | 0x0004 | 0x0008 | 0x0800



def is_debris(name: str) -> bool:
    """Operating-system files that are no part of a dataset (Windows thumbnails, macOS resource forks...)."""
    return name.startswith(".") or name.lower() in DEBRIS_NAMES


class Tree:
    """What both trees share: skipping (and remembering) operating-system debris."""

    def __init__(self):
        # locations of debris (reason None) and of local entries that are not files, seen while listing, in order
        self.skipped: dict[str, Optional[str]] = {}

    def _listed(self, path: str, dirs, files) -> tuple[list[str], list[str]]:
        for name in sorted({*dirs, *files}):
            if is_debris(name):
                self.skipped[self.location(posixpath.join(path, name))] = None
        return sorted(d for d in dirs if not is_debris(d)), sorted(f for f in files if not is_debris(f))


class FolderTree(Tree):
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
        check_size(where, self._gfile.stat(where).length if "://" in self.root else os.path.getsize(where))
        return open(where, "rb") if "://" not in self.root else self._gfile.GFile(where, "rb")

    def read(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()


class ZipTree(Tree):
    """A zip archive seen as folders; member paths are relative to the archive's root."""

    def __init__(self, archive: zipfile.ZipFile, label: str):
        super().__init__()
        self._zip = archive
        self.label = label
        for name in archive.namelist():
            if unsafe_name(name):
                raise MemberError(label, f"member {name!r} {unsafe_name(name)}; refusing the archive")
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
        check_size(self.location(path), info.file_size, info.compress_size)
        return info

    def read(self, path: str) -> bytes:
        info = self._info(path)
        data = self._read_whole(info)
        if data is not None:
            return data
        try:
            with self._zip.open(info) as member:  # read(n), unlike read(), inflates at most n bytes at a time
                return member.read(info.file_size + 1)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise MemberError(self.location(path), f"damaged zip member ({e})") from e

    def _read_whole(self, info: zipfile.ZipInfo) -> Optional[bytes]:
        """A stored or deflated member in one read and one inflate, its size and CRC-32 checked as zipfile checks
        them; None for anything else or anything wrong, which zipfile then reads (or names the damage) as before.

        zipfile's own reader costs about a tenth more per slice on top of the inflate (its buffering, a decompressor
        object and a running CRC per member), and ISA-L inflates and checksums in under half of zlib's time."""
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & ~_PLAIN_FLAGS:
            return None
        try:
            with self._zip._lock:  # the lock zipfile's own readers hold around each seek and read of the shared file
                fp = self._zip.fp
                fp.seek(info.header_offset)
                header = fp.read(_LOCAL_HEADER.size)
                if len(header) != _LOCAL_HEADER.size:
                    return None
                signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
                name = fp.read(name_length)
                fp.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
                raw = fp.read(info.compress_size)
        except Exception:  # noqa: BLE001  (a failing read fails again in zipfile, which names it as before)
            return None
        encoding = "utf-8" if info.flag_bits & 0x800 else (getattr(self._zip, "metadata_encoding", None) or "cp437")
        if signature != b"PK\x03\x04" or name.decode(encoding, "replace") != info.orig_filename:
            return None
        if len(raw) != info.compress_size:
            return None
        try:  # inflating no further than the declared size: a member that lies about it cannot fill memory
            data = raw if info.compress_type == zipfile.ZIP_STORED else \
                isal_zlib.decompressobj(-15).decompress(raw, info.file_size + 1)
        except isal_zlib.error:
            return None
        if len(data) != info.file_size or isal_zlib.crc32(data) != info.CRC:
            return None
        return data

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
        yield FolderTree(root)
        return
    with contextlib.ExitStack() as stack:
        # The builtin open for local files: tf.io.gfile cannot seek back from the end of a tiny file.
        f = stack.enter_context(open(root, "rb") if "://" not in root else tf.io.gfile.GFile(root, "rb"))
        try:
            archive = stack.enter_context(zipfile.ZipFile(f))
        except (zipfile.BadZipFile, tf.errors.OpError, OSError) as e:
            raise CtsegError(f"{root} is neither a folder nor a readable zip archive ({e})") from e
        yield ZipTree(archive, root)


def open_inner_zip(tree, zip_path: str, stack: contextlib.ExitStack) -> ZipTree:
    """An inner zip as a tree, read from its file (a folder's) or a spooled copy (the outer zip's), never whole."""
    location = tree.location(zip_path)
    f = stack.enter_context(tree.open(zip_path))
    try:
        archive = stack.enter_context(zipfile.ZipFile(f))
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise MemberError(location, f"not a readable zip archive ({e})") from e
    return ZipTree(archive, location)
