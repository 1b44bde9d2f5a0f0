"""``rayclust fetch-weights VIEW...``: download hub weights now, for machines without a network.

Run it where there is a network; the weights land in the Hugging Face cache
(``$HF_HOME/hub``, by default ``~/.cache/huggingface/hub``). Copy that folder to the
offline machines (same path, or point ``HF_HOME`` at the copy) and set ``HF_HUB_OFFLINE=1``
there, so that nothing waits on a network that is not there.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rayclust.cli_common import EXIT_FAILED, EXIT_OK, CommandError, run_standalone
from rayclust.views.registry import UnknownViewError, resolve_view
from rayclust.views.weights import TimmHub, WeightsUnavailableError, get_weight_source


def register(subparsers: Any) -> None:
    """Add ``fetch-weights`` to the ``rayclust`` command's sub-commands."""
    parser = subparsers.add_parser(
        "fetch-weights",
        description="Download the hub weights of views into the Hugging Face cache, to copy "
        "to machines without a network (then set HF_HUB_OFFLINE=1 there).",
    )
    parser.add_argument("views", nargs="+", help="view names, e.g. dinov2_small clip_b16")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import constants

    try:
        specs = [resolve_view(name) for name in args.views]
    except (UnknownViewError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    for spec in specs:
        source = get_weight_source(spec.weights)
        if not isinstance(source, TimmHub):
            print(f"{spec.name}: {source.access} weights ({spec.weights}), nothing to fetch")
            continue
        name = source.resolved_name(spec.arch)
        if source.is_cached(spec.arch):
            print(f"{spec.name}: {name} already in {constants.HF_HUB_CACHE}")
            continue
        try:
            source.check_available(spec)  # fails in a second offline; a download retries
            source.create_model(spec)
        except WeightsUnavailableError as exc:
            raise CommandError(str(exc), EXIT_FAILED) from None
        print(f"{spec.name}: {name} fetched into {constants.HF_HUB_CACHE}")
    print(
        f"For offline machines: copy {constants.HF_HOME} there (same path, or set HF_HOME to "
        "the copy) and set HF_HUB_OFFLINE=1"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``rayclust fetch-weights`` on its own (``python -m rayclust.views.fetch``)."""
    return run_standalone(register, argv)
