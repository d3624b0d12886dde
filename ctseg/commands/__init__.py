"""One module per `ctseg` subcommand; each has `register(subparsers)` and sets `func`."""

# Where `ctseg run` keeps its outputs and `ctseg compile` its spec, unless --workdir says otherwise.
DEFAULT_WORKDIR = "out"
