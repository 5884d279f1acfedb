"""``python -m export <command>``: a thin dispatcher over the offline stage's subcommands."""

from __future__ import annotations

import argparse
import sys

from export import cli_repo, cli_train


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m export", description="Offline stage: train, export, evaluate, zoo."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_train.register(sub)
    cli_repo.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
