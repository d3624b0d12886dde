"""What a data root is, cheaply, for TFX's cache: its files' paths, sizes and modification times, hashed."""
from __future__ import annotations

import hashlib
import os
import posixpath
import uuid

from ctseg.errors import CtsegError
from ctseg.object_stores import register_filesystems

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
