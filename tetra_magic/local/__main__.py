"""`python -m tetra_magic.local` (or `tetra-local`): run the local endpoint in the foreground.

Prints the base URL and where the token is (never the token itself), then serves until
Ctrl-C / SIGTERM, or until --idle-timeout seconds pass with no client call and no pending job.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from tetra_magic.local.server import ServerOptions, run_forever


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tetra_magic.local",
        description="A RunPod Serverless endpoint on this machine, running the tetra worker.",
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


def main(argv: list[str] | None = None) -> None:
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
    main()
