"""`tetra-local` (or `python -m tetra_magic.local`): run, see or stop the local endpoint.

    tetra-local [start] [--port 8000 --workers 4 ...]   run a server in the foreground
    tetra-local status                                  the one the kernels use: URL, pid, idle
    tetra-local stop                                    stop it (the next cell starts another)

`start` is the default, so the options alone still start a server, as they always did. It
prints the base URL and where the token is (never the token itself), then serves until Ctrl-C /
SIGTERM, or until --idle-timeout seconds pass with no client call and no pending job. `status`
and `stop` act on the server this Python's kernels share (started in the background by the
first cell, stopping after two idle hours): a user should not need a Python one-liner for it.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

COMMANDS = ("start", "status", "stop")
_EPILOG = (
    "commands: start (the default) runs a server in the foreground with these options;"
    " status shows the server the kernels share (URL, pid, workers, idle time, log);"
    " stop stops it."
)


def _prog() -> str:
    """The name the user typed: the `tetra-local` script, or the module."""
    name = sys.argv[0].rpartition("/")[2] if sys.argv and sys.argv[0] else ""
    return "tetra-local" if name == "tetra-local" else "python -m tetra_magic.local"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{_prog()} [start]",
        description="A RunPod Serverless endpoint on this machine, running the tetra worker.",
        epilog=_EPILOG,
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1; anything else exposes the endpoint"
        " to the network, still behind the token)",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes, i.e. jobs run at once (default: one per GPU, else 2)",
    )
    parser.add_argument("--endpoint-id", default="local", help="the endpoint id in URLs")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds without client requests or pending jobs (default: never)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`start` (the default: no command word), `status` or `stop`; the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "start"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    if command == "start":
        start(rest)
        return 0
    return see_or_stop(command, rest)


def see_or_stop(command: str, argv: list[str]) -> int:
    """`status` (exit status 0 when a server is running, 1 when not) or `stop` (always 0)."""
    argparse.ArgumentParser(
        prog=f"{_prog()} {command}",
        description="Show the local endpoint the kernels of this Python share."
        if command == "status"
        else "Stop the local endpoint the kernels of this Python share.",
    ).parse_args(argv)
    from tetra_magic.local import control

    if command == "stop":
        print(control.stop_text())
        return 0
    found = control.status()
    print(control.status_text(found, stop_command=f"{control.cli_command()} stop"))
    return 0 if found.running else 1


def start(argv: list[str]) -> None:
    """Run a server in the foreground until it is stopped or idles out."""
    from tetra_magic.local.server import ServerOptions, run_forever

    args = _parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        _parser().error("--workers must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.endpoint_id):
        _parser().error("--endpoint-id may hold only letters, digits, '-' and '_'")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    options = ServerOptions(
        host=args.host,
        port=args.port,
        workers=args.workers,
        endpoint_id=args.endpoint_id,
        idle_timeout=args.idle_timeout,
    )
    run_forever(options, announce=lambda text: print(text, flush=True))


if __name__ == "__main__":
    sys.exit(main())
