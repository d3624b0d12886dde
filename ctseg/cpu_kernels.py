"""The CPU: the cores this process may use, and TensorFlow's CPU kernels (oneDNN's convolutions instead of Eigen's).

TensorFlow 2.15 turns oneDNN on by itself on Linux only for CPUs with AVX512-VNNI, AVX512-BF16, AVX-VNNI
or AMX (`DefaultOneDnnPolicy` in tensorflow/core/util/port.cc); on the AVX2 CPUs of most laptops and CI
machines it trains the UNET on Eigen's kernels, with about 1.6x the CPU a train step (docs/BENCHMARKS.md,
"oneDNN"). The environment variable is read once, when TensorFlow loads, so this must run before.
"""
from __future__ import annotations

import os

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prefer_onednn() -> None:
    """oneDNN on unless the user chose (`TF_ENABLE_ONEDNN_OPTS=0` keeps Eigen's kernels)."""
    os.environ.setdefault(ONEDNN, "1")


def onednn_in_use() -> bool | None:
    """Whether the loaded TensorFlow runs oneDNN's kernels; None where it cannot say (TensorFlow's own probe,
    a private module, may move)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    probe = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return None if probe is None else bool(probe())
