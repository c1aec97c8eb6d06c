"""The ``llmscratch`` command (also ``python -m llmscratch``).

Sub-commands:
    env       print the environment report (versions, device, memory)
    data      list the data registry, or fetch and verify files (``llmscratch data fetch imdb/imdb_test.csv.gz``)
    release   write exercises/ from solutions/ (labs); --check also checks the graded cells statically
    grade     grade submitted lab notebooks into a gradebook CSV (in a bubblewrap sandbox; --require-sandbox)
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _cmd_env(args: argparse.Namespace) -> int:
    from .utils import format_env_report

    print(format_env_report(args.device))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from . import data

    if args.action == "list":
        for rel, entry in data.REGISTRY.items():
            print(f"{rel:<40} {entry.description}")
        return 0
    names = args.files or list(data.REGISTRY)
    failed = 0
    for rel in names:
        try:
            path = data.fetch(rel, download=args.action == "fetch")
            print(f"ok      {rel:<40} {path}")
        except (data.ChecksumError, data.DataNotFoundError, KeyError) as err:
            failed += 1
            print(f"FAILED  {rel:<40} {err}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmscratch", description="Build Large Models from Scratch: course tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("env", help="print versions, device and memory")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("data", help="list, verify or fetch the course data sets")
    p.add_argument("action", choices=["list", "verify", "fetch"])
    p.add_argument("files", nargs="*", help="registry names such as imdb/imdb_train.csv.gz (default: all)")
    p.set_defaults(func=_cmd_data)

    try:
        from . import grading
    except ImportError:  # pragma: no cover - grading is part of the package; guard keeps `env` usable if broken
        grading = None
    if grading is not None and hasattr(grading, "add_cli"):
        grading.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
