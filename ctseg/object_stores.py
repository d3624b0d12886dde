"""The object stores ctseg reads and writes through TensorFlow's and Beam's filesystems: S3 (AWS, MinIO) and GCS.

TensorFlow 2.15 registers `gs://` itself; `s3://` comes from tensorflow-io (its S3 filesystem reads
`S3_ENDPOINT`, a URL with its scheme: tensorflow_io/core/filesystems/s3/s3_filesystem.cc, GetS3Client)
and Beam's from boto3 (apache_beam/io/aws/clients/s3/boto3_client.py, which leaves the endpoint to
botocore's `AWS_ENDPOINT_URL`). One cluster gives a pod one of these spellings; `s3_environment`
derives the others from it, so TensorFlow, Beam and KFP's launcher (`fromEnv` credentials) all
reach the same store.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Mapping

from ctseg.cpu_kernels import usable_cores
from ctseg.errors import CtsegError

S3_SCHEME = "s3://"
GCS_SCHEME = "gs://"
STORE_SCHEMES = (GCS_SCHEME, S3_SCHEME)
# KFP's launcher knows `minio://`; TensorFlow and Beam do not. The same bucket is reachable as s3://.
KFP_ONLY_SCHEMES = {"minio://": S3_SCHEME}
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT")
# MinIO ignores the region but the AWS SDKs refuse to sign without one.
DEFAULT_REGION = "us-east-1"


def s3_spelling(uri: str) -> str | None:
    """The s3:// path TensorFlow and Beam can use for a `minio://` one (None for any other path)."""
    for scheme, usable in KFP_ONLY_SCHEMES.items():
        if uri.startswith(scheme):
            return usable + uri[len(scheme):]
    return None


def check_store_path(uri: str, what: str) -> str:
    """Refuses KFP's `minio://` with the s3:// path to use instead."""
    usable = s3_spelling(uri)
    if usable:
        raise CtsegError(f"{what} {uri!r}: TensorFlow and Beam cannot read or write minio:// paths; use {usable} "
                         f"with AWS_ENDPOINT_URL (or S3_ENDPOINT) pointing at MinIO in the pods")
    return uri


def s3_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The variables to add so that tensorflow-io and boto3 both see the S3 endpoint and region `env` names.

    The endpoint comes from AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL (botocore) or S3_ENDPOINT (TensorFlow's
    classic name, a bare host:port honouring S3_USE_HTTPS=0). Returns only what `env` lacks.
    """
    endpoint = next((env[k] for k in ENDPOINT_VARIABLES if env.get(k)), "")
    wanted: dict[str, str] = {}
    if endpoint:
        if "://" not in endpoint:
            endpoint = ("http://" if env.get("S3_USE_HTTPS", "1") == "0" else "https://") + endpoint
        wanted["S3_ENDPOINT"] = endpoint.rstrip("/")
        wanted["AWS_ENDPOINT_URL_S3"] = env.get("AWS_ENDPOINT_URL_S3") or endpoint.rstrip("/")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or (DEFAULT_REGION if endpoint else "")
    if region:
        wanted.update(AWS_REGION=region, AWS_DEFAULT_REGION=env.get("AWS_DEFAULT_REGION") or region)
    return {k: v for k, v in wanted.items() if env.get(k) != v}


def configure_s3_environment() -> dict[str, str]:
    """Completes this process's S3 variables (before tensorflow-io creates its client); returns what was set."""
    added = s3_environment(os.environ)
    os.environ.update(added)
    return added


def register_filesystems(uri: str | None = None) -> None:
    """Registers TensorFlow's `s3://` filesystem (tensorflow-io) when `uri` is on S3, or always when None.

    Every process that opens an s3:// path with tf.io.gfile needs it, Beam's worker processes included.
    """
    if uri is not None and not uri.startswith(S3_SCHEME):
        return
    configure_s3_environment()  # read when the S3 client is first made, at the first s3:// access
    import tensorflow_io  # noqa: F401  (its import registers the S3 filesystem)


def exit_without_native_teardown(code: int) -> None:
    """Ends the process with `code` after Python's exit handlers, skipping C++ static destructors.

    tensorflow-io's S3 client shuts the AWS SDK down from a static destructor, after the objects it
    uses are gone: every process that touched s3:// would otherwise die at exit with "pure virtual
    method called" (SIGABRT, exit 134) after its work succeeded.
    """
    import atexit
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def needs_native_teardown_skipped() -> bool:
    return "tensorflow_io" in sys.modules


def cgroup_cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU limit in cores from its cgroup quota (v2 cpu.max, v1 cfs files); None when unlimited."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def pod_cpu_count(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: the CPU limit rounded up, never more than the CPUs it is pinned to."""
    available = usable_cores()
    limit = cgroup_cpu_limit(cgroup_root)
    return max(1, min(available, math.ceil(limit))) if limit else max(1, available)
