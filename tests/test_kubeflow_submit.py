"""`ctseg submit`: real kfp.Client against local HTTP endpoints standing in for a cluster's Pipelines API.

No cluster can run here, so the endpoints are a small HTTP server speaking the v2beta1 REST calls that
`create_run_from_pipeline_package` makes; everything on the client side (kfp's loader, kfp_server_api,
urllib3) runs for real.
"""
from __future__ import annotations

import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from ctseg.cli import main
from ctseg.errors import CtsegError
from ctseg.ircad import UNREAD_PREFIX, data_fingerprint
from ctseg.phantom import write_phantom
from ctseg.pipeline.kubeflow_runner import compile_pipeline
from ctseg.pipeline.kubeflow_submit import HEALTHZ_PATH, compiled_fingerprint, submit

RUN_ID = "5b0c6a4e-run"
EXPERIMENT_ID = "e7a1-experiment"


class FakePipelinesApi(BaseHTTPRequestHandler):
    """Answers like KFP's API server in `mode`: "ok", "unauthorized" (401) or "login" (302 to a Dex page)."""
    mode = "ok"
    tag_name = None  # the KFP version healthz reports (backend/src/apiserver/main.go:278-281 at 2.5.0)
    requests: list = []
    authorization: list = []  # the Authorization header of each request

    def log_message(self, *args):
        pass

    def _send(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, body=None):
        self.requests.append((self.command, self.path, body))
        self.authorization.append(self.headers.get("Authorization"))
        if self.path.startswith("/dex"):
            return self._send(200, b"<html><form>Log in to Your Account</form></html>", "text/html")
        if self.mode == "unauthorized":
            return self._send(401, {"error": "Unauthorized", "code": 16, "message": "Unauthorized"})
        if self.mode == "login":
            return self._send(302, b"", "text/html", headers=[("Location", "/dex/auth?client_id=kubeflow")])
        route = (self.command, self.path.split("?")[0])
        if route == ("GET", HEALTHZ_PATH):
            return self._send(200, {"multi_user": False, **({"tag_name": self.tag_name} if self.tag_name else {})})
        if route == ("GET", "/apis/v2beta1/experiments"):
            return self._send(200, {})
        if route == ("POST", "/apis/v2beta1/experiments"):
            return self._send(200, {"experiment_id": EXPERIMENT_ID, "display_name": body["display_name"]})
        if route == ("POST", "/apis/v2beta1/runs"):
            return self._send(200, {"run_id": RUN_ID, "display_name": body["display_name"],
                                    "experiment_id": body["experiment_id"]})
        return self._send(404, {"message": f"no route {route}"})

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))




@pytest.fixture()
def pipelines_api(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp keeps a context file under ~/.config/kfp
    FakePipelinesApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePipelinesApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def host_of(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture()
def any_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("pipelineInfo: {name: x}\n")
    return path


@pytest.fixture(scope="module")
def compiled_spec(tmp_path_factory):
    return compile_pipeline(image="ghcr.io/example/ctseg:0.1.0", output=tmp_path_factory.mktemp("kfp") / "ctseg.yaml",
                            data_root="gs://bucket/3Dircadb1.zip", pipeline_root="gs://bucket/root")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_host_is_one_sentence(monkeypatch, any_spec, capsys):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert main(["submit", "--spec", str(any_spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctseg submit: no Kubeflow Pipelines host: pass --host URL")
    assert len(err.splitlines()) == 1


def test_unreachable_host_is_one_sentence(any_spec, capsys):
    host = f"http://127.0.0.1:{closed_port()}"
    assert main(["submit", "--host", host, "--spec", str(any_spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ctseg submit: cannot reach Kubeflow Pipelines at {host} (")
    assert "refused" in err.lower() and len(err.splitlines()) == 1


def test_refused_credentials_are_one_sentence(pipelines_api, any_spec, capsys):
    FakePipelinesApi.mode = "unauthorized"
    try:
        assert main(["submit", "--host", host_of(pipelines_api), "--spec", str(any_spec), "--token", "bad"]) == 2
    finally:
        FakePipelinesApi.mode = "ok"
    err = capsys.readouterr().err.strip()
    assert "refused the credentials (HTTP 401)" in err and "--token" in err and len(err.splitlines()) == 1
    assert FakePipelinesApi.requests == [("GET", HEALTHZ_PATH, None)], "nothing is submitted after a refusal"


def test_a_login_page_is_reported_as_missing_auth(pipelines_api, any_spec):
    FakePipelinesApi.mode = "login"
    try:
        with pytest.raises(CtsegError, match=r"web page instead of the API \(redirected to .*/dex/auth.*login page"):
            submit(any_spec, host=host_of(pipelines_api))
    finally:
        FakePipelinesApi.mode = "ok"


def test_a_password_in_the_host_is_refused_and_never_echoed(any_spec, capsys):
    assert main(["submit", "--host", "http://alice:s3cret-pw@127.0.0.1:8080", "--spec", str(any_spec)]) == 2
    err = capsys.readouterr().err
    assert "s3cret-pw" not in err and "alice" not in err
    assert "http://127.0.0.1:8080 was given with a user name or password in it (not shown)" in err
    assert "--token or $KF_PIPELINES_TOKEN" in err and len(err.strip().splitlines()) == 1


def test_the_token_can_come_from_the_environment(pipelines_api, any_spec, monkeypatch, capsys):
    """$KF_PIPELINES_TOKEN (read by ctseg; kfp.Client has no variable for a token) keeps it off the command line."""
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "from-the-env")
    FakePipelinesApi.mode, FakePipelinesApi.authorization = "unauthorized", []
    try:
        assert main(["submit", "--host", host_of(pipelines_api), "--spec", str(any_spec)]) == 2
    finally:
        FakePipelinesApi.mode = "ok"
    assert FakePipelinesApi.authorization == ["Bearer from-the-env"]
    assert "from-the-env" not in capsys.readouterr().err
    FakePipelinesApi.mode, FakePipelinesApi.authorization = "unauthorized", []
    try:
        assert main(["submit", "--host", host_of(pipelines_api), "--spec", str(any_spec), "--token", "flag"]) == 2
    finally:
        FakePipelinesApi.mode = "ok"
    assert FakePipelinesApi.authorization == ["Bearer flag"]  # the command line wins


def test_a_missing_spec_names_the_file(tmp_path):
    with pytest.raises(CtsegError, match=r"nothing\.yaml: no compiled spec there; write one with `ctseg compile`"):
        submit(tmp_path / "nothing.yaml", host="http://127.0.0.1:1")


def test_not_a_pipelines_api(pipelines_api, any_spec, monkeypatch):
    monkeypatch.setattr("ctseg.pipeline.kubeflow_submit.HEALTHZ_PATH", "/apis/v1/not-here")
    with pytest.raises(CtsegError, match="has no Kubeflow Pipelines v2 API"):
        submit(any_spec, host=host_of(pipelines_api))


@pytest.mark.slow
def test_submit_creates_experiment_and_run_and_prints_id_and_link(pipelines_api, compiled_spec, capsys):
    host = host_of(pipelines_api)
    assert main(["submit", "--host", host, "--spec", str(compiled_spec), "--experiment", "liver-gpu",
                 "--run-name", "nightly"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"run id: {RUN_ID}", f"link:   {host}/#/runs/details/{RUN_ID}", "root:   gs://bucket/root"]
    assert out[3].startswith("data:   unread:") and len(out) == 4  # gs://bucket cannot be read from here
    posts = {path.split("?")[0]: body for method, path, body in FakePipelinesApi.requests if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "liver-gpu"
    run = posts["/apis/v2beta1/runs"]
    assert run["display_name"] == "nightly" and run["experiment_id"] == EXPERIMENT_ID
    sent = run["pipeline_spec"]
    sent = sent.get("pipeline_spec", sent)
    on_disk = yaml.safe_load(compiled_spec.read_text())
    assert sent["pipelineInfo"] == on_disk["pipelineInfo"]
    assert sent["deploymentSpec"] == on_disk["deploymentSpec"]
    assert sent["defaultPipelineRoot"] == on_disk["defaultPipelineRoot"]
    # KFP's driver takes the run's root, never the spec's (backend/src/v2/driver/driver.go:151-172 at 2.5.0)
    assert run["runtime_config"]["pipeline_root"] == on_disk["defaultPipelineRoot"] == "gs://bucket/root"


@pytest.mark.slow
def test_submit_passes_another_pipeline_root_with_the_run(pipelines_api, compiled_spec):
    submit(compiled_spec, host=host_of(pipelines_api), pipeline_root="s3://other/root")
    (run,) = [body for method, path, body in FakePipelinesApi.requests if path.startswith("/apis/v2beta1/runs")]
    assert run["runtime_config"]["pipeline_root"] == "s3://other/root"


def _sent_fingerprint() -> str:
    [run] = [body for method, path, body in FakePipelinesApi.requests if method == "POST" and "/runs" in path]
    spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])
    return compiled_fingerprint(spec)


def test_submit_fingerprints_the_data_again_so_changed_data_is_not_served_from_kfp_cache(pipelines_api, tmp_path,
                                                                                          capsys):
    """KFP caches a task on its inputs: a spec compiled before the data changed must not reuse the old ingest."""
    data = write_phantom(tmp_path / "ircad", patients=4, slices=2, size=16, seed=1)
    spec = compile_pipeline(image="ghcr.io/example/ctseg:0.1.0", output=tmp_path / "ctseg.yaml", data_root=str(data),
                            pipeline_root="gs://bucket/root")
    compiled = compiled_fingerprint(yaml.safe_load(spec.read_text()))
    assert compiled == data_fingerprint(str(data))
    host = host_of(pipelines_api)
    submit(spec, host=host)
    assert _sent_fingerprint() == compiled  # unchanged data: the same cache key

    shutil.rmtree(data)
    write_phantom(data, patients=5, slices=2, size=16, seed=2)
    FakePipelinesApi.requests = []
    assert main(["submit", "--host", host, "--spec", str(spec)]) == 0
    assert _sent_fingerprint() == data_fingerprint(str(data)) != compiled
    assert "changed since the spec was compiled" in capsys.readouterr().out
    assert compiled_fingerprint(yaml.safe_load(spec.read_text())) == compiled  # the spec file itself is left alone


@pytest.mark.slow
def test_data_unreadable_from_here_gets_a_new_fingerprint_per_submission(pipelines_api, compiled_spec):
    sent = []
    for _ in range(2):
        FakePipelinesApi.requests = []
        submit(compiled_spec, host=host_of(pipelines_api))
        sent.append(_sent_fingerprint())
    assert all(f.startswith(UNREAD_PREFIX) for f in sent) and sent[0] != sent[1]


@pytest.mark.parametrize("tag, refused", [("2.0.5", True), ("2.2.0", True), ("2.3.0", False), ("2.5.0", False),
                                          ("unknown", False)])
def test_kfp_older_than_2_3_is_refused_before_anything_is_submitted(pipelines_api, any_spec, tag, refused):
    FakePipelinesApi.tag_name = tag
    try:
        if refused:
            with pytest.raises(CtsegError, match=f"is version {tag}; .* needs 2.3.0 or newer"):
                submit(any_spec, host=host_of(pipelines_api))
            assert FakePipelinesApi.requests == [("GET", HEALTHZ_PATH, None)]
        else:
            assert submit(any_spec, host=host_of(pipelines_api)).run_id == RUN_ID
    finally:
        FakePipelinesApi.tag_name = None
