"""Command-line options shared by `ctseg runs` and `ctseg lineage`: which ML Metadata store to read."""
from __future__ import annotations

import os

from ctseg.mlmd.store import DEFAULT_GRPC_PORT, connect
from ctseg.workdir import DEFAULT_WORKDIR, METADATA_FILE


def add_store_arguments(parser) -> None:
    """The options that choose the store, shared by `ctseg runs` and `ctseg lineage`."""
    group = parser.add_argument_group("ML Metadata store")
    group.add_argument("--workdir", default=DEFAULT_WORKDIR,
                       help=f"the `ctseg run` work dir whose {METADATA_FILE} to read (default: ./{DEFAULT_WORKDIR})")
    group.add_argument("--metadata", metavar="SQLITE",
                       help=f"SQLite store of local runs (default: WORKDIR/{METADATA_FILE})")
    group.add_argument("--mlmd-host", help="host of an MLMD gRPC service (e.g. a cluster's metadata-grpc-service); "
                                           "overrides --metadata")
    group.add_argument("--mlmd-port", type=int, default=DEFAULT_GRPC_PORT,
                       help=f"port of the MLMD gRPC service (default {DEFAULT_GRPC_PORT})")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def store_from_args(args):
    sqlite_path = args.metadata or os.path.join(args.workdir, METADATA_FILE)
    return connect(sqlite_path=sqlite_path, host=args.mlmd_host, port=args.mlmd_port)
