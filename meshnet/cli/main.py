"""`meshnet`: the parser and `main(argv) -> exit code`.

Exit codes are chosen here and nowhere else: 0 success, 1 a failure (the router's error,
no router, a kernel error), 2 a usage error (bad flags or values; nothing was changed).
Every failure prints one line on stderr: `meshnet: <what went wrong>`, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from meshnet.api.client import ApiClient
from meshnet.cli import commands, launch
from meshnet.cli import dns as dns_cli
from meshnet.cli import docker as docker_cli
from meshnet.config import add_launch_flags, add_socket_flags, socket_of
from meshnet.errors import MeshnetError, UsageError
from meshnet.lab import cli as lab_cli

EXIT_FAILURE = 1
EXIT_USAGE = 2


def client(args: argparse.Namespace, timeout: float = 30.0) -> ApiClient:
    return ApiClient(socket_of(args), timeout=timeout)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, exit 2 (argparse would print the whole usage first)."""
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="meshnet",
        description="meshnet: a self-configuring container overlay network. One router per host; "
        "routers find each other from one seed and carry container traffic over the kernel's VXLAN "
        "or the userspace sleeve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("launch", help="start the router on this host (in the background unless --foreground)")
    add_launch_flags(p)
    p.add_argument("--foreground", action="store_true", help="run in the foreground, log to stderr (systemd, containers)")
    p.add_argument("--log-to-file", action="store_true", help=argparse.SUPPRESS)  # how a background router logs
    p.set_defaults(func=launch.cmd_launch)

    p = sub.add_parser("stop", help="stop the router and wait until it has exited (containers and the bridge stay)")
    add_socket_flags(p)
    p.set_defaults(func=launch.cmd_stop)

    commands.add_parsers(sub)
    docker_cli.add_parsers(sub, add_socket_flags)
    dns_cli.add_parsers(sub, add_socket_flags)
    lab_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"meshnet: {exc.message or exc}", file=sys.stderr)
        return EXIT_USAGE
    except (MeshnetError, OSError, ValueError) as exc:
        message = getattr(exc, "message", None) or (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))
        print(f"meshnet: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("meshnet: interrupted", file=sys.stderr)
        return 130
