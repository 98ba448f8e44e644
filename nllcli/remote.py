"""Remote inputs: s3://, gs://, az://, http(s):// paths and globs, opened through fsspec.

fsspec rather than pyarrow.fs: one interface for every scheme nll reads (pyarrow has no HTTP file
system, and its S3 and GCS ones take options and credentials under other names), the same
``storage_options`` people pass to pandas and Dask, and globs. The file objects fsspec returns are
handed to pyarrow's streaming CSV reader and to its Parquet reader (which reads the footer, then
row group by row group, with ranged requests), so memory stays bounded as for local files.

Credentials come from where each library looks (AWS_* variables and ~/.aws for s3fs,
GOOGLE_APPLICATION_CREDENTIALS for gcsfs, AZURE_STORAGE_* for adlfs); never from the command line.
URLs shown in messages lose their user info and query string (tokens, signatures).

``resolve(url, storage_options) -> (filesystem, urls)`` is the one place where a URL becomes files;
Dask workers call it too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import InputError, UsageError

# scheme -> (fsspec protocol, the module it needs, the extra that installs it)
SCHEMES = {
    "s3": ("s3", "s3fs", "s3"), "s3a": ("s3", "s3fs", "s3"),
    "gs": ("gcs", "gcsfs", "gcs"), "gcs": ("gcs", "gcsfs", "gcs"),
    "az": ("az", "adlfs", "azure"), "abfs": ("abfs", "adlfs", "azure"), "abfss": ("abfs", "adlfs", "azure"),
    "http": ("http", "aiohttp", "http"), "https": ("https", "aiohttp", "http"),
}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB = re.compile(r"[*?\[]")
READ_BLOCK_BYTES = 8 << 20  # bytes per ranged request (s3fs would buffer 50 MiB blocks: memory, not speed)
DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz", ".gz", ".parquet", ".pq", ".parq")


def scheme_of(path: str) -> str | None:
    match = _URL.match(str(path))
    return match.group(1).lower() if match else None


def is_url(path: object) -> bool:
    """Whether ``path`` names a remote file (s3://, gs://, az://, http(s)://...)."""
    return isinstance(path, str) and scheme_of(path) in SCHEMES


def shown(url: str) -> str:
    """The URL as messages show it: without user info (user:password@) or query string (tokens)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _scrubbed(text: str) -> str:
    """A library's message with every URL in it shown without secrets."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+", lambda m: shown(m.group(0)), text)


# Storage options that carry a secret: refused on the command line (shell history, `ps`, CI logs).
SECRET_OPTIONS = re.compile(r"(^|_)(key|secret|token|password|passwd|credentials?|connection_string|sas)($|_)|"
                            r"^(account_key|client_secret|aws_access_key_id|aws_secret_access_key)$", re.IGNORECASE)
_WHERE_SECRETS_GO = ("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws for s3://, "
                     "GOOGLE_APPLICATION_CREDENTIALS for gs://, AZURE_STORAGE_* for az://")


def parse_storage_options(items: Sequence[str] | None) -> dict[str, Any]:
    """--storage-option KEY=VALUE (repeatable): values read as JSON where they parse (anon=true,
    max_concurrency=4, config_kwargs={"retries": {"max_attempts": 2}}), else kept as text
    (endpoint_url=http://...). Options that carry a secret (key, secret, token, password...) are refused:
    credentials come from the environment and config files."""
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--storage-option {item!r}: expected KEY=VALUE, e.g. --storage-option anon=true")
        if SECRET_OPTIONS.search(key):
            raise UsageError(f"--storage-option {key}=...: credentials are not taken on the command line (they "
                             f"would stay in shell history and process lists); set them in the environment: "
                             f"{_WHERE_SECRETS_GO}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        options[key] = value
    return options


def filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """The fsspec file system for ``url``; UsageError with the install command if its extra is missing."""
    import importlib

    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise UsageError(f"{shown(url)}: unknown scheme {scheme}:// (nll reads s3, gs, az and http(s) URLs)")
    protocol, module, extra = SCHEMES[scheme]
    try:
        importlib.import_module("fsspec")
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{shown(url)}: reading {scheme}:// needs {module}: pip install 'nllcli[{extra}]'") from None
    import fsspec

    try:
        return fsspec.filesystem(protocol, **(storage_options or {}))
    except ImportError:
        raise UsageError(f"{shown(url)}: reading {scheme}:// needs {module}: pip install 'nllcli[{extra}]'") from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{shown(url)}: bad --storage-option: {_scrubbed(str(exc))}") from exc


def error(url: str, exc: BaseException) -> InputError:
    """A remote failure as one line naming the URL: no such file, access denied, no connection."""
    cause, status = exc.__cause__, getattr(exc.__cause__, "status", None)  # fsspec's HTTP wraps what happened
    if isinstance(status, int) and status in (401, 403):
        return InputError(shown(url), f"access denied (HTTP {status})")
    if isinstance(status, int) and status != 404:
        return InputError(shown(url), f"cannot read: HTTP {status}")
    if isinstance(exc, FileNotFoundError) and _connection_failed(cause):
        return InputError(shown(url), f"cannot connect: {_scrubbed(' '.join(str(cause).split()))[:300]}")
    if isinstance(exc, FileNotFoundError):
        return InputError(shown(url), "no such file (or bucket)")
    if isinstance(exc, PermissionError):
        return InputError(shown(url), "access denied (check the credentials in the environment or ~/.aws)")
    if isinstance(exc, IsADirectoryError):
        return InputError(shown(url), "is a directory")
    text = _scrubbed(" ".join(str(exc).split())) or type(exc).__name__
    return InputError(shown(url), f"cannot read: {text[:300]}")


def _connection_failed(cause: BaseException | None) -> bool:
    """Whether the error behind a "not found" is in fact a host that cannot be reached."""
    if cause is None:
        return False
    if isinstance(cause, (ConnectionError, TimeoutError)) or type(cause).__name__ == "gaierror":
        return True
    try:
        import aiohttp

        return isinstance(cause, aiohttp.ClientConnectionError)
    except ImportError:
        return False


def _remote_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of remote reads that are the user's or the network's, not nll's."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    try:
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:
        import botocore.exceptions

        errors.append(botocore.exceptions.BotoCoreError)
        errors.append(botocore.exceptions.ClientError)
    except ImportError:
        pass
    return tuple(errors)


def resolve(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, list[str]]:
    """(fsspec file system, the URLs of the files ``url`` names): a glob expanded (sorted), a
    "directory" (a prefix) replaced by the data files below it; InputError when nothing matches.
    HTTP has no listing, so an http(s) glob is a usage error."""
    fs = filesystem(url, storage_options)
    scheme = scheme_of(url)
    protocol = SCHEMES[scheme or ""][0]
    if protocol in ("http", "https"):
        if _GLOB.search(urlsplit(url).path):
            raise UsageError(f"{shown(url)}: HTTP has no file listing, so globs do not work there; name each file")
        return fs, [url]
    path = fs._strip_protocol(url)
    try:
        if _GLOB.search(path):
            found = sorted(p for p in fs.glob(path) if not fs.isdir(p))
            if not found:
                raise InputError(shown(url), "no file matches this pattern")
        elif url.endswith("/") or (not fs.isfile(path) and fs.isdir(path)):
            found = sorted(p for p in fs.find(path) if p.lower().endswith(DATA_SUFFIXES)
                           and not any(part.startswith((".", "_")) for part in p[len(path.rstrip("/")):].split("/")))
            if not found:
                raise InputError(shown(url), "holds no .csv, .tsv or .parquet files")
        else:
            found = [path]
    except InputError:
        raise
    except (TypeError, AttributeError) as exc:  # the file system is made lazily: its options checked here
        raise option_error(url, exc) from exc
    except _remote_errors() as exc:
        raise error(url, exc) from exc
    return fs, [f"{scheme}://{p}" for p in found]


def option_error(url: str, exc: BaseException) -> UsageError:
    return UsageError(f"{shown(url)}: a --storage-option was not accepted: {_scrubbed(str(exc))}")


@dataclass
class RemoteFile:
    """One remote file: its URL, file system and path there, and size."""

    url: str
    fs: Any
    path: str
    size: int | None

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> "RemoteFile":
        fs = filesystem(url, storage_options)
        path = url if SCHEMES[scheme_of(url) or ""][0] in ("http", "https") else fs._strip_protocol(url)
        try:
            info = fs.info(path)
        except (TypeError, AttributeError) as exc:
            raise option_error(url, exc) from exc
        except _remote_errors() as exc:
            raise error(url, exc) from exc
        if info.get("type") == "directory":
            raise InputError(shown(url), "is a directory (end it with / to read the files below it)")
        size = info.get("size")
        return cls(url, fs, path, int(size) if size is not None else None)

    @property
    def name(self) -> str:
        return shown(self.url)

    def python_file(self, read_ahead: bool = True):
        """A read-only, seekable Python file object: fsspec reads ahead READ_BLOCK_BYTES per ranged
        request, or (``read_ahead=False``) fetches exactly what is read."""
        try:
            if not read_ahead:
                return self.fs.open(self.path, "rb", cache_type="none")
            return self.fs.open(self.path, "rb", block_size=READ_BLOCK_BYTES)
        except _remote_errors() as exc:
            raise error(self.url, exc) from exc

    def arrow_file(self):
        """The same file as a pyarrow NativeFile (for the CSV stream and the Parquet reader)."""
        import pyarrow as pa

        return pa.PythonFile(self.python_file(), mode="r")

    def read(self, limit: int) -> bytes:
        """The first ``limit`` bytes (a format's magic, a whole state file), fetched as one range."""
        with self.python_file(read_ahead=False) as handle:
            try:
                return handle.read(limit)
            except _remote_errors() as exc:
                raise error(self.url, exc) from exc


def read_bytes(url: str, storage_options: dict[str, Any] | None = None, *, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of one remote file (a state file)."""
    return RemoteFile.open(url, storage_options).read(limit + 1)


def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write a whole remote object in one request (an object store never shows half of it)."""
    fs = filesystem(url, storage_options)
    if SCHEMES[scheme_of(url) or ""][0] in ("http", "https"):
        raise UsageError(f"{shown(url)}: nll cannot write to HTTP; use a local path or s3://, gs://, az://")
    try:
        fs.pipe_file(fs._strip_protocol(url), data)
    except _remote_errors() as exc:
        raise error(url, exc) from exc
