"""``python -m export <command>``: a thin dispatcher over the offline stage's subcommands."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from export import cli_repo, cli_train, cli_zoo


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m export", description="Offline stage: train, export, evaluate, zoo."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_train.register(sub)
    cli_repo.register(sub)
    cli_zoo.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader of stdout went away (`python -m export zoo-status | head`): stop quietly, as
        # a Unix tool killed by SIGPIPE would. Point stdout at /dev/null so that Python's flush at
        # exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # the status a shell gives a death by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
