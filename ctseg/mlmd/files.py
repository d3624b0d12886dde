"""Files under an artifact's URI, local or remote (gs://, s3:// through TensorFlow's filesystems)."""
from __future__ import annotations

import os
from typing import Optional

from ctseg.object_stores import register_filesystems

# An artifact's folder per split, `Split-<name>` (TFX's artifact_utils.get_split_uri).
SPLIT_PREFIX = "Split-"


def split_name(folder: str) -> Optional[str]:
    """The split a `Split-<name>` folder holds; None for any other folder name."""
    name = folder.rstrip("/")
    if not name.startswith(SPLIT_PREFIX) or name == SPLIT_PREFIX:
        return None
    return name[len(SPLIT_PREFIX):]


def split_dirs(uri: str | os.PathLike) -> dict[str, str]:
    """{split: folder} of the `Split-<name>` folders under an artifact URI, local or remote, sorted by split."""
    uri = os.fspath(uri)
    found = {split_name(entry): os.path.join(uri, entry) for entry in list_dir(uri)}
    return {split: found[split] for split in sorted(s for s in found if s)}


def read_bytes(path: str) -> Optional[bytes]:
    """A file under an artifact URI, local or remote (gs://, s3:// through TensorFlow's filesystems)."""
    try:
        if "://" not in path:
            with open(path, "rb") as f:
                return f.read()
        import tensorflow as tf

        register_filesystems(path)
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except Exception:  # noqa: BLE001 - a missing or unreachable file only means fewer details
        return None


def list_dir(path: str) -> list[str]:
    try:
        if "://" not in path:
            return sorted(os.listdir(path))
        import tensorflow as tf

        register_filesystems(path)
        return sorted(n.rstrip("/") for n in tf.io.gfile.listdir(path))
    except Exception:  # noqa: BLE001
        return []
