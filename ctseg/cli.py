"""The `ctseg` command. Each subcommand lives in `ctseg.commands.<name>` and registers its own parser."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ctseg.cpu_kernels import prefer_onednn
from ctseg.errors import CtsegError
from ctseg.quiet import silence

# Each name is `ctseg.commands.<name>` (a module with `register`). A module that fails to import stops
# the CLI with its error: a missing command would only be noticed as an unknown choice.
COMMANDS = ("phantom", "run", "stats", "compile", "submit", "runs", "lineage", "predict")
VERBOSE_HELP = "show TensorFlow/Beam logs and full tracebacks"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctseg",
        description="Liver segmentation from CT DICOM with TFX: make data, run the pipeline, inspect, predict.")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ctseg.commands.{name}")
        except Exception as e:
            raise ImportError(f"ctseg: the `{name}` command (ctseg.commands.{name}) failed to import: "
                              f"{type(e).__name__}: {e}") from e
        module.register(sub)
    for command in sub.choices.values():  # `ctseg run -v` as well as `ctseg -v run`; absent, the top's value stays
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    silence("-v" in argv or "--verbose" in argv)
    prefer_onednn()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "  %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CtsegError as e:
        print(f"ctseg {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `ctseg stats ... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: one readable line unless --verbose asks for the traceback
        if args.verbose:
            raise
        print(f"ctseg {args.command} failed: {type(e).__name__}: {e}\n(run with --verbose for the full traceback)",
              file=sys.stderr)
        return 1


def console_main() -> None:
    """The `ctseg` command: main's exit code, without the native teardown that aborts after S3 use."""
    from ctseg import object_stores

    code = main()
    if object_stores.needs_native_teardown_skipped():
        object_stores.exit_without_native_teardown(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
