"""One module per `ctseg` subcommand; each has `register(subparsers)` and sets `func`."""

from ctseg.workdir import DEFAULT_WORKDIR  # noqa: F401 - where the commands' --workdir defaults to


def add_out_argument(parser, help: str, *aliases: str, required: bool = False) -> None:
    """`--out PATH`, the one spelling of every command's output path (`aliases` keep older spellings working)."""
    parser.add_argument("--out", *aliases, dest="out", metavar="OUT", required=required, help=help)
