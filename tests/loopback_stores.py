"""Real object-store APIs on 127.0.0.1 for tests: moto's S3 server and gcp-storage-emulator's GCS.

Each server is a subprocess started here and stopped after. Clients reach them as a pod reaches its
store: boto3 and tensorflow-io through AWS_ENDPOINT_URL; Beam's GCS client (google-cloud-storage)
through STORAGE_EMULATOR_HOST. TensorFlow's own GCS filesystem has its endpoint compiled in
(`https://www.googleapis.com/storage/v1/`, tsl/platform/cloud/gcs_file_system.cc), so it goes through
an HTTPS proxy on loopback that answers for www.googleapis.com with a certificate made here (trusted
through CURL_CA_BUNDLE, which TensorFlow's curl client reads) and forwards to the emulator; its token
is GOOGLE_AUTH_TOKEN_FOR_TESTING. google-auth (Beam's client) finds its credentials as in a GKE pod with
Workload Identity, from a metadata server (here on loopback, through GCE_METADATA_HOST and GCE_METADATA_IP).
Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import datetime
import json
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

# Where TensorFlow sends the JSON API calls and where it downloads objects from.
GCS_API_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no server on 127.0.0.1:{port} after {timeout_s}s: {log.read_text()[-2000:]}")


class _Server:
    scheme = ""

    def __init__(self, work: Path, bucket: str):
        self.work, self.bucket, self.port = work, bucket, free_port()
        self.work.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    def _start(self, argv: list[str]) -> None:
        log = self.work / f"{type(self).__name__}.log"
        self.process = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=self.work)
        _wait_for_port(self.port, self.process, log)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def uri(self, key: str = "") -> str:
        return f"{self.scheme}{self.bucket}/{key}".rstrip("/")

    def key(self, uri: str) -> str:
        prefix = f"{self.scheme}{self.bucket}/"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri} is not in {prefix}")
        return uri[len(prefix):]

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object whose key starts with `prefix` (no delimiter: markers are listed as objects)."""
        return {key: self.read(key) for key in self.keys(prefix)}

    def upload_tree(self, local: Path, prefix: str) -> str:
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            self.write(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
        return self.uri(prefix)

    def download_tree(self, uri: str, local: Path) -> Path:
        prefix = self.key(uri).rstrip("/") + "/"
        for key in self.keys(prefix):
            if not key.endswith("/"):
                target = local / key[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.read(key))
        return local

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class S3Server(_Server):
    """moto in server mode: the S3 REST API (path-style, as MinIO is reached) on 127.0.0.1."""
    scheme = "s3://"
    access_key, secret_key, region = "ctseg-test-key", "ctseg-test-secret", "us-east-1"

    def start(self) -> "S3Server":
        bin_dir = Path(sys.executable).parent
        self._start([str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)])
        self._client = self.client()
        self._client.create_bucket(Bucket=self.bucket)
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name=self.region,
                                              aws_access_key_id=self.access_key,
                                              aws_secret_access_key=self.secret_key)

    def pod_env(self) -> dict[str, str]:
        """What a pod gets from the cluster: the credentials (the endpoint travels in the spec's env)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost"}

    def endpoint_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint}

    def keys(self, prefix: str = "") -> list[str]:
        keys = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)

    def read(self, key: str) -> bytes:
        return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data)


# Repairs to gcp-storage-emulator, each where it departs from HTTP or from GCS:
# - A request body with both `Transfer-Encoding: chunked` and `Content-Length` is read by Content-Length,
#   so the object keeps the chunk framing ("2269\r\n...") cut to that length. TensorFlow's GCS filesystem
#   sends every file upload that way (tsl/platform/cloud/curl_http_request.cc, SetPutFromFile: its own
#   Content-Length header with CURLOPT_PUT and no CURLOPT_INFILESIZE, so curl frames the body in chunks);
#   HTTP/1.1 says the Transfer-Encoding overrides the Content-Length (RFC 9112 section 6.3), as GCS does.
# - An empty body is read as None, and the simple (uploadType=media) upload then fails on len(None):
#   TensorFlow's GCS filesystem uploads every directory marker that way.
# - `Expect: 100-continue` goes unanswered (http.server answers it only when it speaks HTTP/1.1, the
#   emulator speaks 1.0), so curl waits a second before every upload body; GCS answers at once.
EMULATOR_MAIN = """
import sys
from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main

read_body = server._read_raw_data


def read_chunked_first(handler):
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        del handler.headers["Content-Length"]
    return read_body(handler)


server._read_raw_data = read_chunked_first
parse_request = server.RequestHandler.parse_request


def parse_and_continue(self):
    if not parse_request(self):
        return False
    if self.headers.get("Expect", "").lower() == "100-continue":
        self.wfile.write(b"HTTP/1.1 100 Continue\\r\\n\\r\\n")
    return True


server.RequestHandler.parse_request = parse_and_continue
body = server.Request.data.fget
server.Request.data = property(lambda self: body(self) if body(self) is not None or "upload_id" in self._query
                               or self._query.get("uploadType") != ["media"] else b"")
main(sys.argv[1:])
"""


class GcsServer(_Server):
    """gcp-storage-emulator (the GCS JSON API) on 127.0.0.1, and the HTTPS proxy TensorFlow reaches it through."""
    scheme = "gs://"

    def start(self) -> "GcsServer":
        self._start([sys.executable, "-c", EMULATOR_MAIN, "start", "--host", "127.0.0.1", "--port", str(self.port),
                     "--in-memory"])
        self.ca_file = self.work / "googleapis-ca.pem"
        self.proxy = TlsForwardingProxy(self.ca_file, GCS_API_HOSTS, ("127.0.0.1", self.port)).start()
        self.metadata = GceMetadataServer().start()
        self._client = self.client()
        self._client.create_bucket(self.bucket)
        return self

    def stop(self) -> None:
        for helper in (getattr(self, "proxy", None), getattr(self, "metadata", None)):
            if helper:
                helper.stop()
        super().stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="ctseg-test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def pod_env(self) -> dict[str, str]:
        proxy, metadata = f"http://127.0.0.1:{self.proxy.port}", f"127.0.0.1:{self.metadata.port}"
        return {"https_proxy": proxy, "http_proxy": proxy, "CURL_CA_BUNDLE": str(self.ca_file),
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": GceMetadataServer.token,
                "GCE_METADATA_HOST": metadata, "GCE_METADATA_IP": metadata, "no_proxy": "127.0.0.1,localhost",
                "STORAGE_EMULATOR_HOST": self.endpoint}

    def endpoint_env(self) -> dict[str, str]:
        return {}

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self._client.list_blobs(self.bucket, prefix=prefix))

    def read(self, key: str) -> bytes:
        return self._client.bucket(self.bucket).blob(key).download_as_bytes()

    def write(self, key: str, data: bytes) -> None:
        self._client.bucket(self.bucket).blob(key).upload_from_string(data)


class GceMetadataServer:
    """The answers a GKE pod's metadata server gives google-auth: the ping, the project and the default service
    account's info and token (google/auth/compute_engine/_metadata.py: ping, get_project_id,
    get_service_account_info, get_service_account_token). Without one, Beam's GCS client retries
    google.auth.default() with backoff for about 40 s in every step before it connects anonymously
    (apache_beam/internal/gcp/auth.py, _get_credentials_with_retrys)."""
    project, token = "ctseg-test", "ctseg-test-token"
    account = "ctseg-pipeline@ctseg-test.iam.gserviceaccount.com"

    def __init__(self):
        answers = {
            "/": ("text/plain", ""),
            "/computeMetadata/v1/project/project-id": ("text/plain", self.project),
            "/computeMetadata/v1/instance/service-accounts/default/": ("application/json", json.dumps(
                {"email": self.account, "aliases": ["default"],
                 "scopes": ["https://www.googleapis.com/auth/cloud-platform"]})),
            "/computeMetadata/v1/instance/service-accounts/default/token": ("application/json", json.dumps(
                {"access_token": self.token, "expires_in": 3600, "token_type": "Bearer"})),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                answer = answers.get(urllib.parse.urlsplit(self.path).path)
                if self.headers.get("Metadata-Flavor") != "Google":
                    status, (kind, text) = 403, ("text/plain", "Missing Metadata-Flavor: Google")
                else:
                    status, (kind, text) = (200, answer) if answer else (404, ("text/plain", "not found"))
                data = text.encode()
                self.send_response(status)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def start(self) -> "GceMetadataServer":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _self_signed(hosts: tuple[str, ...], ca_file: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = ca_file.with_suffix(".key")
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, key_file


class TlsForwardingProxy:
    """An HTTP proxy on 127.0.0.1 that answers for `hosts` (TLS through CONNECT, or plain HTTP) and relays
    the plain bytes to `target`; any other host is refused."""

    def __init__(self, ca_file: Path, hosts: tuple[str, ...], target: tuple[str, int]):
        cert, key = _self_signed(hosts, ca_file)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.hosts, self.target = hosts, target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stopped = threading.Event()

    def start(self) -> "TlsForwardingProxy":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = client.recv(4096)
                if not chunk:
                    return
                request += chunk
            method, target, rest = request.split(b" ", 2)
            if method != b"CONNECT":  # plain HTTP through the proxy: the emulator's upload URLs are http://
                url = urllib.parse.urlsplit(target.decode())
                if url.hostname not in self.hosts:
                    client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    return
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                with socket.create_connection(self.target) as upstream:
                    upstream.sendall(b" ".join([method, path.encode(), rest]))
                    _relay(client, upstream)
                return
            if target.decode().split(":")[0] not in self.hosts:
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            try:
                tls = self.context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError):
                return
            with tls, socket.create_connection(self.target) as upstream:
                _relay(tls, upstream)


def _relay(client: socket.socket, upstream: socket.socket, idle_s: float = 120) -> None:
    """Both directions in one thread (an SSL socket is not to be read and written from two)."""
    peer = {client: upstream, upstream: client}
    try:
        while True:
            buffered = isinstance(client, ssl.SSLSocket) and client.pending()
            ready = [client] if buffered else select.select([client, upstream], [], [], idle_s)[0]
            if not ready:
                return
            for source in ready:
                data = source.recv(65536)
                if not data:
                    return
                peer[source].sendall(data)
    except (OSError, ssl.SSLError):
        return


def started(kind: str, work: Path, bucket: str) -> Iterator[_Server]:
    server = {"s3": S3Server, "gs": GcsServer}[kind](work, bucket).start()
    try:
        yield server
    finally:
        server.stop()
