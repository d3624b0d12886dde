"""One module per `ctseg` subcommand; each has `register(subparsers)` and sets `func`."""
