"""Submits a compiled spec to Kubeflow Pipelines with `kfp.Client`; every failure is one sentence.

Before the client is built, one plain GET of the API's healthz tells an unreachable host, a login
page or refused credentials apart, which the client itself would report as a retry loop or a
deserialisation traceback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ctseg.errors import CtsegError

HOST_ENV = "KF_PIPELINES_ENDPOINT"  # the variable kfp.Client itself reads
# Credentials from the environment rather than the command line (where `ps` and shell history see them).
# ctseg reads these; kfp.Client has no variable of its own for a bearer token or cookie.
TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIE_ENV = "KF_PIPELINES_COOKIE"
HEALTHZ_PATH = "/apis/v2beta1/healthz"
DEFAULT_EXPERIMENT = "ctseg"
CONNECT_TIMEOUT_S = 10
AUTH_HINT = ("pass a token with --token or $KF_PIPELINES_TOKEN "
             "(or a session cookie with --cookie or $KF_PIPELINES_COOKIE)")


# Before 2.3.0 the launcher creates /gcs/..., /s3/... or /minio/... for each output before the step runs
# (backend/src/v2/component/launcher_v2.go:714-735 at 2.0.5, prepareOutputFolders) and nothing makes those
# writable for the image's non-root user; 2.3.0 mounts an emptyDir on each (kubeflow/pipelines#10857,
# compiler/argocompiler/container.go).
MIN_KFP_VERSION = (2, 3, 0)

INGEST_TASK = "IrcadExampleGen"
FINGERPRINT_PARAMETER = "input_fingerprint"


@dataclasses.dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    link: str
    experiment: str
    fingerprint: str | None = None           # the ingest step's data fingerprint sent with this run
    compiled_fingerprint: str | None = None  # the one `ctseg compile` recorded in the spec
    pipeline_root: str | None = None         # where the run writes its artifacts


def refresh_fingerprint(spec: dict) -> tuple[str | None, str | None]:
    """Sets the ingest task's `input_fingerprint` to the data's fingerprint now; returns (compiled, now).

    KFP caches a task on its inputs, so a spec compiled before the data changed would reuse the old
    Examples; the data is fingerprinted again here (a unique value when it cannot be read from here,
    so ingest then always runs). (None, None) for a spec without the ingest task.
    """
    from ctseg import ircad

    params = _ingest_parameters(spec)
    if FINGERPRINT_PARAMETER not in params or "data_root" not in params:
        return None, None
    value = params[FINGERPRINT_PARAMETER].setdefault("runtimeValue", {})
    compiled = value.get("constant")
    value["constant"] = ircad.build_fingerprint(params["data_root"]["runtimeValue"]["constant"])
    return compiled, value["constant"]


def _ingest_parameters(spec: dict) -> dict:
    task = spec.get("root", {}).get("dag", {}).get("tasks", {}).get(INGEST_TASK)
    return (task or {}).get("inputs", {}).get("parameters", {})


def compiled_fingerprint(spec: dict) -> str | None:
    """The data fingerprint a compiled spec's ingest task carries (the cache key KFP sees)."""
    return _ingest_parameters(spec).get(FINGERPRINT_PARAMETER, {}).get("runtimeValue", {}).get("constant")


def resolve_host(host: str | None) -> str:
    host = (host or os.environ.get(HOST_ENV) or "").strip()
    if not host:
        raise CtsegError(f"no Kubeflow Pipelines host: pass --host URL (e.g. http://localhost:8080 after "
                         f"`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`) or set {HOST_ENV}")
    parts = urllib.parse.urlsplit(host)
    if parts.username is not None or parts.password is not None:
        # Never echoed: the URL would carry a password into terminals, logs and error messages.
        port = f":{parts.port}" if parts.port else ""
        shown = urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + port))
        raise CtsegError(f"the Kubeflow Pipelines URL {shown} was given with a user name or password in it (not "
                         f"shown); the Pipelines API does not take them there: pass a bearer token with --token "
                         f"or ${TOKEN_ENV}, or a session cookie with --cookie or ${COOKIE_ENV}")
    if not host.startswith(("http://", "https://")):
        raise CtsegError(f"host {host!r} must be a URL starting with http:// or https://")
    return host.rstrip("/")


def _auth_headers(token: str | None, cookie: str | None) -> dict[str, str]:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = cookie
    return headers


def check_host(host: str, *, token: str | None = None, cookie: str | None = None) -> dict:
    """GETs the Pipelines API's healthz; returns its JSON or raises a CtsegError saying what is wrong."""
    request = urllib.request.Request(host + HEALTHZ_PATH, headers=_auth_headers(token, cookie))
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S) as response:
            body, final_url = response.read(), response.geturl()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise CtsegError(f"Kubeflow Pipelines at {host} refused the credentials (HTTP {e.code}): "
                             f"{AUTH_HINT}") from None
        if e.code == 404:
            raise CtsegError(f"{host} answers HTTP but has no Kubeflow Pipelines v2 API "
                             f"({HEALTHZ_PATH} not found)") from None
        raise CtsegError(f"Kubeflow Pipelines at {host} answered HTTP {e.code} {e.reason} to a health check") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CtsegError(f"cannot reach Kubeflow Pipelines at {host} ({reason}): check the URL and that the "
                         f"port-forward or ingress is up") from None
    try:
        return json.loads(body)
    except ValueError:
        where = "" if final_url.startswith(host + HEALTHZ_PATH) else f" (redirected to {final_url})"
        raise CtsegError(f"Kubeflow Pipelines at {host} answered with a web page instead of the API{where}, "
                         f"most likely a login page: {AUTH_HINT}") from None


def check_kfp_version(host: str, healthz: dict) -> None:
    """Refuses a Pipelines API older than MIN_KFP_VERSION by the `tag_name` its healthz reports
    (backend/src/apiserver/main.go:278-281 at 2.5.0); an unknown or custom tag is let through."""
    tag = str(healthz.get("tag_name") or "")
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(?:[-+.].*)?", tag)
    if match and tuple(map(int, match.groups())) < MIN_KFP_VERSION:
        minimum = ".".join(map(str, MIN_KFP_VERSION))
        raise CtsegError(f"Kubeflow Pipelines at {host} is version {tag}; ctseg's image runs as a non-root user and "
                         f"needs {minimum} or newer, whose launcher gets writable /gcs, /s3 and /minio folders")


def _api_error(host: str, error) -> CtsegError:
    status = getattr(error, "status", None)
    if status in (401, 403):
        return CtsegError(f"Kubeflow Pipelines at {host} refused the credentials (HTTP {status}): {AUTH_HINT}")
    try:
        detail = json.loads(error.body).get("message") or error.reason
    except (TypeError, ValueError, AttributeError):
        detail = getattr(error, "reason", None) or str(error).splitlines()[0]
    return CtsegError(f"Kubeflow Pipelines at {host} rejected the run (HTTP {status}): {detail}")


def submit(
    spec_file: str | Path,
    *,
    host: str | None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    cookie: str | None = None,
    pipeline_root: str | None = None,
) -> SubmittedRun:
    """Creates a run of `spec_file` (written by `ctseg compile`) in `experiment` on the Pipelines at `host`.

    The run carries `pipeline_root`, by default the spec's `defaultPipelineRoot`: KFP's backend never
    reads the latter (it takes the run's root, else its launcher config map's, else
    minio://mlpipeline/v2/artifacts: backend/src/v2/driver/driver.go:151-172 at 2.5.0), so without it the
    steps would write where TensorFlow's filesystems cannot.
    """
    spec_file = Path(spec_file)
    if not spec_file.is_file():
        raise CtsegError(f"{spec_file}: no compiled spec there; write one with `ctseg compile`")
    host = resolve_host(host)
    token = token or os.environ.get(TOKEN_ENV) or None
    cookie = cookie or os.environ.get(COOKIE_ENV) or None
    check_kfp_version(host, check_host(host, token=token, cookie=cookie))

    import kfp
    import kfp_server_api
    import urllib3
    import yaml
    from google.protobuf import json_format

    try:
        spec = yaml.safe_load(spec_file.read_text())
    except yaml.YAMLError:
        spec = None  # kfp's loader says what is wrong with it below
    compiled, fingerprint = refresh_fingerprint(spec) if isinstance(spec, dict) else (None, None)
    pipeline_root = pipeline_root or (spec.get("defaultPipelineRoot") if isinstance(spec, dict) else None)
    quiet = io.StringIO()  # kfp prints its own "Experiment details" lines; the CLI prints the run once
    try:
        with contextlib.redirect_stdout(quiet), tempfile.TemporaryDirectory() as tmp:
            sent = spec_file
            if fingerprint is not None:
                sent = Path(tmp) / spec_file.name
                sent.write_text(yaml.safe_dump(spec, sort_keys=True))
            client = kfp.Client(host=host, existing_token=token, cookies=cookie,
                                namespace=namespace or "kubeflow")
            result = client.create_run_from_pipeline_package(
                str(sent), arguments={}, run_name=run_name, experiment_name=experiment,
                namespace=namespace, pipeline_root=pipeline_root)
    except kfp_server_api.ApiException as e:
        raise _api_error(host, e) from None
    except urllib3.exceptions.HTTPError as e:
        raise CtsegError(f"lost the connection to Kubeflow Pipelines at {host} ({type(e).__name__})") from None
    except (ValueError, yaml.YAMLError, json_format.ParseError) as e:  # kfp's loader: not a pipeline spec
        raise CtsegError(f"{spec_file}: kfp cannot load it as a pipeline spec ({str(e).splitlines()[0]})") from None
    if not result.run_id:
        raise CtsegError(f"Kubeflow Pipelines at {host} accepted the request but returned no run id")
    return SubmittedRun(run_id=result.run_id, link=f"{host}/#/runs/details/{result.run_id}", experiment=experiment,
                        fingerprint=fingerprint, compiled_fingerprint=compiled, pipeline_root=pipeline_root)
