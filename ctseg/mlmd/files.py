"""Files under an artifact's URI, local or remote (gs://, s3:// through TensorFlow's filesystems)."""
from __future__ import annotations

import os
from typing import Optional


def read_bytes(path: str) -> Optional[bytes]:
    """A file under an artifact URI, local or remote (gs://, s3:// through TensorFlow's filesystems)."""
    try:
        if "://" not in path:
            with open(path, "rb") as f:
                return f.read()
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except Exception:  # noqa: BLE001 - a missing or unreachable file only means fewer details
        return None


def list_dir(path: str) -> list[str]:
    try:
        if "://" not in path:
            return sorted(os.listdir(path))
        import tensorflow as tf

        return sorted(n.rstrip("/") for n in tf.io.gfile.listdir(path))
    except Exception:  # noqa: BLE001
        return []
