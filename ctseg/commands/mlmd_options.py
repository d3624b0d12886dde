"""Command-line options shared by `ctseg runs` and `ctseg lineage`: which ML Metadata store to read."""
from __future__ import annotations

from ctseg.mlmd.store import DEFAULT_GRPC_PORT, DEFAULT_SQLITE, connect


def add_store_arguments(parser) -> None:
    """The options that choose the store, shared by `ctseg runs` and `ctseg lineage`."""
    group = parser.add_argument_group("ML Metadata store")
    group.add_argument("--metadata", default=DEFAULT_SQLITE, metavar="SQLITE",
                       help=f"SQLite store of local runs (default {DEFAULT_SQLITE})")
    group.add_argument("--mlmd-host", help="host of an MLMD gRPC service (e.g. a cluster's metadata-grpc-service); "
                                           "overrides --metadata")
    group.add_argument("--mlmd-port", type=int, default=DEFAULT_GRPC_PORT,
                       help=f"port of the MLMD gRPC service (default {DEFAULT_GRPC_PORT})")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def store_from_args(args):
    return connect(sqlite_path=args.metadata, host=args.mlmd_host, port=args.mlmd_port)
