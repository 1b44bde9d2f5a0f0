"""What every ``rayclust`` sub-command shares: options, KEY=VALUE overrides, error handling.

A sub-command module (``rayclust/train/cli.py``, ``rayclust/deep/cli.py``, ...) exposes

    def register(subparsers) -> None     # adds its parser, with set_defaults(handler=run)
    def run(args: argparse.Namespace) -> int

``rayclust.cli`` builds the top-level parser from the registers and calls ``dispatch``. A
handler reports a user's mistake by raising ``ConfigError``, ``FileNotFoundError``,
``NotADirectoryError`` or ``CommandError``; ``dispatch`` prints it as one line,
``rayclust <command>: error: <message>``, and exits 2 (``CommandError`` carries its own code;
a run record that could not be written, ``runs.RunRecordError``, exits 1 the same way).
Kept apart from ``rayclust.cli`` so that sub-command modules import it without a cycle.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rayclust.config import ConfigError, deep_merge, parse_overrides
from rayclust.runs import RunRecordError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

Register = Callable[[Any], None]  # register(subparsers) -> None

# A dotted config key followed by "=": such tokens are overrides wherever they stand.
_OVERRIDE_TOKEN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")


class CommandError(Exception):
    """A failure a sub-command reports as one line, with its exit code (2: the user's mistake)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- options several commands take ----------------------------------------------------------


def add_config_command(
    subparsers: Any, name: str, description: str, config_help: str, overrides_example: str
) -> argparse.ArgumentParser:
    """A sub-command that runs a stage from a YAML file: ``NAME CONFIG [KEY=VALUE ...]``."""
    parser = subparsers.add_parser(name, description=description)
    parser.add_argument("config", help=config_help)
    add_overrides(parser, overrides_example)
    return parser


def add_resume(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--resume", action="store_true", help=help)


def add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    """``KEY=VALUE`` config overrides, accepted anywhere on the line (``args.overrides``)."""
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {example}"
    )
    parser.set_defaults(takes_overrides=True)


def add_quiet(
    parser: argparse.ArgumentParser, help: str = "warnings only, no progress bars"
) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help=help)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also the debug lines: backend choices, every fit, library loaders",
    )


def add_tracking_options(
    parser: argparse.ArgumentParser,
    default_uri: str = "a local store beside the runs",
) -> None:
    """``--tracking-uri`` and ``--no-mlflow``, turned into config by ``tracking_overrides``."""
    parser.add_argument("--tracking-uri", help=f"MLflow tracking URI (default: {default_uri})")
    parser.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")


def tracking_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``tracking`` section that ``--tracking-uri`` / ``--no-mlflow`` ask for."""
    tracking: dict[str, Any] = {}
    if args.tracking_uri:
        tracking["uri"] = args.tracking_uri
    if args.no_mlflow:
        tracking["enabled"] = False
    return {"tracking": tracking} if tracking else {}


def config_layers(args: argparse.Namespace, *flags: Mapping[str, Any]) -> dict[str, Any]:
    """Config changes from the command line: ``flags`` (what options ask for), then
    ``--tracking-uri`` / ``--no-mlflow`` when the command has them, then KEY=VALUE (last wins)."""
    tracking = tracking_overrides(args) if hasattr(args, "no_mlflow") else {}
    return deep_merge({}, *flags, tracking, parse_overrides(list(args.overrides)))


# --- parsing and running ----------------------------------------------------------------------


def split_overrides(
    argv: Sequence[str], commands: Mapping[str, argparse.ArgumentParser]
) -> tuple[list[str], list[str]]:
    """Pull ``key.sub=value`` tokens out of the line, wherever they stand, for commands that
    take overrides (argparse cannot mix a variable-length positional with later options)."""
    argv = list(argv)
    parser = commands.get(argv[0]) if argv else None
    if parser is None or not parser.get_default("takes_overrides"):
        return argv, []
    rest: list[str] = []
    overrides: list[str] = []
    for token in argv:
        (overrides if _OVERRIDE_TOKEN.match(token) else rest).append(token)
    return rest, overrides


def new_parser(prog: str = "rayclust", description: str | None = None):
    """A top-level parser and its sub-command action (``add_parser`` for each register)."""
    from rayclust.provenance import version_line

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=version_line())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, subparsers


def dispatch(parser: argparse.ArgumentParser, subparsers: Any, argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the chosen command's handler, errors turned into exit codes."""
    rest, overrides = split_overrides(argv, subparsers.choices)
    args = parser.parse_args(rest)
    if getattr(args, "takes_overrides", False):
        args.overrides = list(args.overrides) + overrides
    prog = f"{parser.prog} {args.command}"
    configure_logging(
        getattr(args, "quiet", False),
        getattr(args, "log_format", None),
        getattr(args, "verbose", False),
    )
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RunRecordError as exc:  # not the user's mistake: the record could not be written
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        print(f"{prog}: interrupted{f'; {hint}' if hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_standalone(register: Register, argv: Sequence[str] | None = None) -> int:
    """One sub-command as a program of its own (``rayclust.train.cli.main(argv)``): the same
    parser, help and error handling as under ``rayclust``."""
    parser, subparsers = new_parser()
    register(subparsers)
    (command,) = subparsers.choices
    return dispatch(parser, subparsers, [command, *(sys.argv[1:] if argv is None else argv)])


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"
# Libraries whose INFO lines say nothing a user acts on (faiss names each SIMD build it
# could not load, with a ModuleNotFoundError): shown with --verbose only.
CHATTY_LIBRARIES = ("faiss", "faiss.loader")


class TqdmLogHandler(logging.StreamHandler):
    """Log lines written through ``tqdm.write``: a line printed while a progress bar is
    drawn goes above the bar instead of breaking it in two."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise; report as logging does
            self.handleError(record)


def configure_logging(
    quiet: bool = False, log_format: str | None = None, verbose: bool = False
) -> None:
    """INFO (WARNING with --quiet, rayclust's DEBUG lines too with --verbose) to stderr,
    through tqdm so that bars stay whole; a command may ask for its own line format."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        handlers=[TqdmLogHandler(sys.stderr)],
        format=log_format or LOG_FORMAT,
        datefmt=LOG_DATE_FORMAT,
    )
    if verbose and not quiet:
        logging.getLogger("rayclust").setLevel(logging.DEBUG)
    for name in CHATTY_LIBRARIES:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:  # a level the user set is kept
            logger.setLevel(logging.INFO if verbose and not quiet else logging.WARNING)
