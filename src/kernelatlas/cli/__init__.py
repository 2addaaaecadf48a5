"""The ``kernelatlas`` command line: a thin layer over the public API.

Each stage's commands live in one module here that exposes ``register(subparsers)``;
``main`` turns :class:`~kernelatlas.errors.KernelAtlasError` into one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import KernelAtlasError

# Modules that add sub-commands; a module that is not there yet is skipped.
COMMAND_MODULES: tuple[str, ...] = (
    "kernelatlas.cli.harvest_cmd",
    "kernelatlas.cli.analyze_cmd",
    "kernelatlas.cli.autoencoder_cmd",
    "kernelatlas.cli.train_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelatlas",
        description="Map trained depthwise convolution kernels onto a calibrated atlas.",
    )
    parser.add_argument("--version", action="version", version=f"kernelatlas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KernelAtlasError as exc:
        print(f"kernelatlas: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kernelatlas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
