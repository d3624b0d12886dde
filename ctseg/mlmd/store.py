"""Opening an ML Metadata store: a SQLite file of local runs or a cluster's MLMD gRPC service, with
errors that name the store; and the context types TFX and KFP record runs under.
"""
from __future__ import annotations

import os
from typing import Optional

from ctseg.errors import CtsegError

RUN_CONTEXT_TYPES = ("pipeline_run", "system.PipelineRun")  # TFX's local/portable runners; KFP v2
PIPELINE_CONTEXT_TYPES = ("pipeline", "system.Pipeline")
NODE_CONTEXT_TYPE = "node"
DEFAULT_GRPC_PORT = 8080
GRPC_TIMEOUT_S = 10.0


def connect(sqlite_path: Optional[str] = None, host: Optional[str] = None, port: Optional[int] = None,
            writable: bool = False):
    """A `MetadataStore` on a SQLite file (read-only unless `writable`), or a client of an MLMD gRPC
    service when `host` is set.

    Fails with a CtsegError, rather than creating an empty store, when the file doesn't exist, and
    when the service doesn't answer within GRPC_TIMEOUT_S.
    """
    if not host:
        if not sqlite_path:
            raise CtsegError("no ML Metadata store given: pass a SQLite path or --mlmd-host")
        _check_sqlite_file(sqlite_path)  # before importing ml_metadata

    from ml_metadata import errors as mlmd_errors
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if host:
        where = f"MLMD service {host}:{port or DEFAULT_GRPC_PORT}"
        config = metadata_store_pb2.MetadataStoreClientConfig(
            host=host, port=int(port or DEFAULT_GRPC_PORT), client_timeout_sec=GRPC_TIMEOUT_S)
    else:
        where = f"ML Metadata store {sqlite_path}"
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = os.path.abspath(sqlite_path)
        config.sqlite.connection_mode = (metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE if writable
                                         else metadata_store_pb2.SqliteMetadataSourceConfig.READONLY)
    try:
        store = metadata_store.MetadataStore(config)
        store.get_context_types()
    except mlmd_errors.StatusError as e:
        raise CtsegError(f"cannot read {where}: {_first_clause(e)}") from None
    except RuntimeError as e:  # MLMD's SQLite source raises RuntimeError("... query: <SQL>") on a foreign file
        reason = _first_clause(e)
        if "CREATE TABLE" in str(e) and "readonly" in reason:  # read-only, MLMD tried to add its missing tables
            reason = "an SQLite database without ML Metadata's tables"
        raise CtsegError(f"{sqlite_path or where} is not an ML Metadata store ({reason})") from None
    return store


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_sqlite_file(path: str) -> None:
    """A sentence for a path that cannot be a SQLite store, before MLMD answers with its SQL."""
    if os.path.isdir(path):
        raise CtsegError(f"{path} is a folder, not an ML Metadata store (give its metadata.sqlite file)")
    if not os.path.isfile(path):
        raise CtsegError(f"no ML Metadata store at {path} (the file does not exist)")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as e:
        raise CtsegError(f"cannot read the ML Metadata store {path}: {(e.strerror or str(e)).lower()}") from None
    if head != _SQLITE_MAGIC:
        raise CtsegError(f"{path} is not an ML Metadata store: it is not an SQLite database "
                         f"(`ctseg run` writes one as WORKDIR/metadata.sqlite)")


def _first_clause(error: Exception) -> str:
    """An MLMD error without the SQL statement it appends (" query: ...")."""
    text = str(error).strip().removeprefix("Error when executing query:")
    return text.split(" query:")[0].strip() or type(error).__name__
