"""S3 and GCS in every ctseg process: the variables each client reads, the pod's CPU limit, TensorFlow's
writes arriving in the store byte for byte, and `ctseg compile` and `ctseg submit` as commands (their exit
code) with s3:// and gs:// data and roots, against the real store APIs on loopback (tests/loopback_stores.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from loopback_stores import started
from test_kubeflow_submit import RUN_ID, FakePipelinesApi

from ctseg.errors import CtsegError
from ctseg.object_stores import check_store_path, pod_cpu_count, s3_environment
from ctseg.pipeline.kubeflow_entrypoint import beam_args_for_pod

IMAGE = "ghcr.io/example/ctseg:0.1.0-test"
CTSEG = Path(sys.executable).parent / "ctseg"


@pytest.mark.parametrize("env, added", [
    ({"AWS_ENDPOINT_URL": "http://minio-service.kubeflow:9000"},
     {"S3_ENDPOINT": "http://minio-service.kubeflow:9000", "AWS_ENDPOINT_URL_S3": "http://minio-service.kubeflow:9000",
      "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}),
    ({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0", "AWS_REGION": "eu-west-1"},
     {"S3_ENDPOINT": "http://minio:9000", "AWS_ENDPOINT_URL_S3": "http://minio:9000",
      "AWS_DEFAULT_REGION": "eu-west-1"}),
    ({"S3_ENDPOINT": "s3.example.org"},
     {"S3_ENDPOINT": "https://s3.example.org", "AWS_ENDPOINT_URL_S3": "https://s3.example.org",
      "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}),
    ({"AWS_DEFAULT_REGION": "us-west-2"}, {"AWS_REGION": "us-west-2"}),  # AWS itself: no endpoint to add
    ({}, {}),
])
def test_s3_variables_for_tensorflow_and_boto3(env, added):
    assert s3_environment(env) == added


def test_minio_paths_are_refused_with_their_s3_spelling():
    with pytest.raises(CtsegError, match=r"use s3://mlpipeline/ctseg with AWS_ENDPOINT_URL"):
        check_store_path("minio://mlpipeline/ctseg", "pipeline root")
    assert check_store_path("s3://mlpipeline/ctseg", "pipeline root") == "s3://mlpipeline/ctseg"


@pytest.mark.parametrize("files, cores", [
    ({"cpu.max": "400000 100000\n"}, 4),            # cgroup v2, a 4-CPU limit
    ({"cpu.max": "150000 100000\n"}, 2),            # 1.5 CPUs: two workers
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
])
def test_pod_cpu_count_follows_the_cgroup_quota(tmp_path, files, cores):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    available = len(os.sched_getaffinity(0))
    assert pod_cpu_count(tmp_path) == min(cores, available)


def test_pod_cpu_count_without_a_quota_is_the_cpus_the_process_may_use(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert pod_cpu_count(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("args, expected", [
    (["--direct_running_mode=multi_processing"], ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]),
    (["--direct_running_mode=multi_processing", "--direct_num_workers=0"],
     ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]),
    (["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
     ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
    (["--direct_running_mode=in_memory", "--direct_num_workers=1"], ["--direct_running_mode=in_memory",
                                                                    "--direct_num_workers=1"]),
    (["--runner=DataflowRunner"], ["--runner=DataflowRunner"]),
])
def test_beam_workers_follow_the_pods_cpu_limit(args, expected):
    assert beam_args_for_pod(args, cores=4) == expected


@pytest.fixture(scope="module", params=["s3", "gs"])
def store(request, tmp_path_factory):
    yield from started(request.param, tmp_path_factory.mktemp(f"{request.param}_server"), "ctseg-data")


ROUND_TRIP = r"""
import os, sys
import tensorflow as tf
from ctseg.object_stores import exit_without_native_teardown, register_filesystems

register_filesystems(sys.argv[1])
payload = os.urandom(300_000) + b"\r\n0\r\n\r\n"  # ends as a chunked body does
with tf.io.gfile.GFile(sys.argv[1] + "/written.bin", "wb") as f:
    f.write(payload)
local = os.path.join(sys.argv[2], "local.txt")
with open(local, "wb") as f:
    f.write(b"copied through tf.io.gfile.copy\n" * 300)
tf.io.gfile.copy(local, sys.argv[1] + "/copied.txt", overwrite=True)
with open(os.path.join(sys.argv[2], "payload.bin"), "wb") as f:
    f.write(payload)
assert tf.io.gfile.GFile(sys.argv[1] + "/written.bin", "rb").read() == payload
exit_without_native_teardown(0)  # tensorflow-io's S3 client aborts at exit otherwise
"""


@pytest.mark.slow
def test_tensorflow_writes_reach_the_store_byte_for_byte(store, tmp_path):
    """A file TensorFlow writes (GCS: one PUT of the whole file) is the same bytes in the store as on disk."""
    done = subprocess.run([sys.executable, "-c", ROUND_TRIP, store.uri("round-trip"), str(tmp_path)],
                          env={**_command_env(store, tmp_path), "PATH": os.environ["PATH"]}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert store.read("round-trip/written.bin") == (tmp_path / "payload.bin").read_bytes()
    assert store.read("round-trip/copied.txt") == (tmp_path / "local.txt").read_bytes()


def _command_env(store, home: Path) -> dict[str, str]:
    return {"PATH": f"{CTSEG.parent}:/usr/bin:/bin", "HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "", **store.pod_env(), **store.endpoint_env()}


@pytest.mark.slow
def test_compile_and_submit_exit_0_with_object_store_data_and_roots(store, small_phantom_zip, tmp_path):
    """The commands as a script or CI job runs them: the data is read through the store's API (its
    fingerprint is the data's, not "unread"), and the process exits 0 (it aborted at exit after S3 use)."""
    data = store.uri("data/3Dircadb1.zip")
    store.write(store.key(data), Path(small_phantom_zip).read_bytes())
    spec = tmp_path / "ctseg.yaml"
    env = _command_env(store, tmp_path)
    done = subprocess.run([str(CTSEG), "compile", "--data", data, "--pipeline-root", store.uri("root"),
                           "--image", IMAGE, "--output", str(spec)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data fingerprint in the spec: unread" not in done.stdout and "data fingerprint in the spec: " in done.stdout
    assert yaml.safe_load(spec.read_text())["defaultPipelineRoot"] == store.uri("root")

    FakePipelinesApi.requests = []
    api = ThreadingHTTPServer(("127.0.0.1", 0), FakePipelinesApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    try:
        done = subprocess.run([str(CTSEG), "submit", "--host", f"http://127.0.0.1:{api.server_address[1]}",
                               "--spec", str(spec), "--pipeline-root", store.uri("other-root")],
                              env=env, capture_output=True, text=True, timeout=600)
    finally:
        api.shutdown()
        api.server_close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run id: {RUN_ID}" in done.stdout and "unread" not in done.stdout
    (run,) = [body for method, path, body in FakePipelinesApi.requests if path.startswith("/apis/v2beta1/runs")]
    assert run["runtime_config"]["pipeline_root"] == store.uri("other-root")
