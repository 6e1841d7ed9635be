"""`hafs ...`: one entry point; each command group lives beside the code it drives.

Every group module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning an exit code).
Exit codes: 0 success, 1 the checked thing failed (a check found errors, a VIP
did not answer), 2 bad usage or bad input (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from hafs import __version__
from hafs.errors import HafsError

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, as every other hafs error (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}: see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    from hafs import cluster_status, commands, status, verify_cli
    from hafs.carp import cli as carp_cli
    from hafs.carp import commands as agent_commands
    from hafs.lab import cli as lab_cli
    from hafs.service import cli as service_cli

    parser: argparse.ArgumentParser = Parser(  # its subcommands' parsers are Parsers too
        prog="hafs",
        description="Highly available Samba/ZFS file servers: cluster model, CARP agent, "
        "deploys, SMB checks and a network-namespace lab.",
    )
    parser.add_argument("--version", action="version", version=f"hafs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    commands.register(sub)
    carp_cli.register(sub)
    agent_commands.register(sub)
    status.register(sub)
    cluster_status.register(sub)
    lab_cli.register(sub)
    service_cli.register(sub)
    verify_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except HafsError as exc:
        print(f"hafs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
