"""Real servers for the remote-input tests: moto's S3 server and an HTTP server with Range requests.

Both listen on 127.0.0.1 only. ``s3_endpoint`` uses the server named by NLL_TEST_S3_ENDPOINT
(.ci/run starts one) and otherwise starts moto's ThreadedMotoServer on a free port. AWS
credentials are dummy values set here, with the config and credentials files pointed at empty
files, so a developer's real ~/.aws is never read. ``http_root`` serves a temporary folder through
http.server with Range support (fsspec reads Parquet footers and row groups by ranges); paths
under /private/ answer 403.
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import threading
import uuid
from pathlib import Path

import pytest

S3_ENDPOINT_VARIABLE = "NLL_TEST_S3_ENDPOINT"
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "nll-test-key", "AWS_SECRET_ACCESS_KEY": "nll-test-secret",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
CLEARED_AWS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
               "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE")


@pytest.fixture(scope="session")
def dummy_aws(tmp_path_factory):
    """Dummy AWS credentials in the environment; the real config files out of reach."""
    folder = tmp_path_factory.mktemp("aws")
    (folder / "config").write_text("")
    (folder / "credentials").write_text("")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DUMMY_AWS.items():
            patch.setenv(name, value)
        for name in CLEARED_AWS:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", str(folder / "config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "credentials"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="session")
def s3_endpoint(dummy_aws):
    """The URL of an S3-protocol server on 127.0.0.1: NLL_TEST_S3_ENDPOINT's, else moto's own."""
    given = os.environ.get(S3_ENDPOINT_VARIABLE)
    if given:
        yield given.rstrip("/")
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class S3Bucket:
    """A fresh bucket on the test server, with the storage options nll needs to reach it."""

    def __init__(self, endpoint: str):
        import boto3

        self.endpoint = endpoint
        self.name = f"nll-test-{uuid.uuid4().hex[:12]}"
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket=self.name)

    @property
    def options(self) -> dict:
        return {"endpoint_url": self.endpoint}

    @property
    def cli_options(self) -> list[str]:
        return ["--storage-option", f"endpoint_url={self.endpoint}"]

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes | str | Path) -> str:
        body = Path(data).read_bytes() if isinstance(data, Path) else data.encode() if isinstance(data, str) else data
        self.client.put_object(Bucket=self.name, Key=key, Body=body)
        return self.url(key)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()


@pytest.fixture
def s3_bucket(s3_endpoint) -> S3Bucket:
    """A new, empty bucket for one test (file-system caches never see another test's objects)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return S3Bucket(s3_endpoint)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range requests (206 Partial Content), as object stores answer."""

    requests: list[tuple[str, str | None]] = []  # (path, Range header) of every GET, for the tests

    def log_message(self, format, *args) -> None:  # quiet in tests
        pass

    def send_head(self):
        if self.command == "GET":
            RangeHandler.requests.append((self.path, self.headers.get("Range")))
        if self.path.split("?", 1)[0].startswith("/private/"):
            self.send_error(403, "Forbidden")
            return None
        header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip()) if header else None
        if match is None:
            return super().send_head()
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404, "File not found")
            return None
        size = os.path.getsize(path)
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
        else:
            start, end = max(0, size - int(last or 0)), size - 1
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        handle = open(path, "rb")
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return handle

    def copyfile(self, source, outputfile) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        self._remaining = None
        while remaining > 0:
            data = source.read(min(remaining, 1 << 16))
            if not data:
                break
            outputfile.write(data)
            remaining -= len(data)

    def end_headers(self) -> None:
        if not self.headers.get("Range"):
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


class HttpRoot:
    """A folder served over HTTP: files written to ``folder`` are at ``url(name)``."""

    def __init__(self, folder: Path, base: str):
        self.folder, self.base = folder, base

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def put(self, name: str, data: bytes | str | Path) -> str:
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        body = Path(data).read_bytes() if isinstance(data, Path) else data.encode() if isinstance(data, str) else data
        target.write_bytes(body)
        return self.url(name)


@pytest.fixture(scope="session")
def http_root(tmp_path_factory):
    """An HTTP server on 127.0.0.1 (a free port) serving a temporary folder, with Range requests."""
    folder = tmp_path_factory.mktemp("http")

    def handler(*args, **kwargs):
        return RangeHandler(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpRoot(folder, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A port nothing listens on (for 'no connection' errors)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
