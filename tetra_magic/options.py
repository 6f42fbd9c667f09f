"""The options of one %%tetra cell, from its magic line and the TetraMagic defaults.

Parsing itself is IPython's magic_arguments (argparse, UsageError on bad input); this module
turns the parsed namespace into validated, defaulted values, naming the option and what it
accepts in every error, so a typo is caught before anything is packed or sent.
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import ipaddress
import keyword
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from IPython.core.error import UsageError

from tetra_magic.cloud.gpus import UnknownGpu, gpu_ids
from tetra_magic.cloud.limits import MAX_EXECUTION_MS


@dataclass(frozen=True)
class WorkerSettings:
    """How the endpoints the magic provisions make and scale their workers (TetraMagic's
    settings; each distinct value is its own endpoint)."""

    image: str = ""
    cpu_image: str = ""
    env: tuple[tuple[str, str], ...] = ()
    gpu_count: int = 1
    workers_min: int = 0
    workers_max: int = 3
    idle_timeout: int = 5
    execution_timeout: int = 600

    def __post_init__(self) -> None:
        _at_least("gpu_count", self.gpu_count, 1)
        _at_least("workers_min", self.workers_min, 0)
        _at_least("workers_max", self.workers_max, max(self.workers_min, 1))
        _at_least("idle_timeout", self.idle_timeout, 1)
        _at_least("execution_timeout", self.execution_timeout, 5)


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise UsageError(f"TetraMagic.{name} must be at least {low}, not {value}")


# WorkerSettings field -> TetraMagic trait, where the names differ.
_TRAITS = {
    "image": "worker_image",
    "cpu_image": "cpu_worker_image",
    "env": "worker_env",
    "execution_timeout": "endpoint_timeout",
}


def worker_settings(magic: Any) -> WorkerSettings:
    """The worker settings as the magic holds them now (`%config TetraMagic.workers_max = 5`)."""
    values = {
        f.name: getattr(magic, _TRAITS.get(f.name, f.name))
        for f in dataclasses.fields(WorkerSettings)
    }
    values["env"] = tuple(sorted((str(k), str(v)) for k, v in dict(values["env"]).items()))
    return WorkerSettings(**values)


@dataclass(frozen=True)
class CellOptions:
    """Everything that decides where and how a cell runs."""

    gpus: tuple[str, ...]
    gpu_ids: tuple[str, ...]
    cpu: bool
    dependencies: tuple[str, ...]
    system_dependencies: tuple[str, ...]
    endpoint: str | None
    local: bool
    timeout: float
    name: str | None
    out: str | None
    stream: bool
    quiet: bool
    verbose: bool
    send: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    queue_timeout: float = 1200.0
    worker: WorkerSettings = WorkerSettings()
    # The session the cell runs in (tetra_magic/session/model.py), and how long its RunPod
    # worker idles.
    session: str | None = None
    session_idle_timeout: int = 600
    session_value_limit: int = 1_000_000
    session_replay: bool = False
    # Data files (tetra_magic/cell/files.py): the files --files and TetraMagic.files send
    # (relative paths, matched when the cell is parsed), and --get's patterns.
    files: tuple[str, ...] = ()
    get: tuple[str, ...] = ()
    # --bg: the cell runs in the background (tetra_magic/job/background.py).
    background: bool = False
    # --detach (with --bg): the job runs on when the kernel exits, and `%tetra attach` brings
    # its values into another kernel (tetra_magic/job/attach.py).
    detach: bool = False
    # --map NAME in EXPR: the cell runs once per item of EXPR, with NAME bound to it, as
    # jobs spread over the endpoint's workers, at most `workers` at once (job/fan_out.py).
    map_name: str | None = None
    map_items: str | None = None
    workers: int | None = None
    retries: int = 0
    # --batch K: items per job (None: fan_out's default, from the items and workers)
    batch: int | None = None


def split_packages(groups: list[list[str]] | None) -> tuple[str, ...]:
    """`--deps a,b --deps c d` -> ("a", "b", "c", "d"); commas inside extras ("pkg[a,b]") and
    version lists ("numpy>=1.2,<2") stay where they are."""
    packages: list[str] = []
    for group in groups or []:
        for item in group:
            packages.extend(_split_commas(item))
    return tuple(dict.fromkeys(p for p in packages if p))


def _split_commas(item: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(item):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0 and not _VERSION_CONTINUES.match(item, index + 1):
            parts.append(item[start:index].strip())
            start = index + 1
    parts.append(item[start:].strip())
    return parts


# After a comma, a version operator means the comma is inside a specifier ("numpy>=1.2,<2").
_VERSION_CONTINUES = re.compile(r"\s*[<>=!~]")
# What apt-get accepts as a package: a Debian name, maybe :arch, maybe =version.
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?$")
MAX_TIMEOUT = MAX_EXECUTION_MS / 1000  # seconds
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _split_names(option: str, groups: list[list[str]] | None) -> tuple[str, ...]:
    """Variable names given to `option` (space or comma separated), each checked."""
    names = tuple(dict.fromkeys(n for g in groups or [] for i in g for n in i.split(",") if n))
    for name in names:
        _check_identifier(option, name)
    return names


def _check_identifier(option: str, name: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"{option}: {name!r} is not a Python variable name")


def _check_new_name(option: str, name: str) -> None:
    """A name the magic will bind in the notebook: binding a builtin's name would hide the
    builtin for every later cell, which nobody asks for on purpose."""
    _check_identifier(option, name)
    if hasattr(builtins, name):
        raise UsageError(
            f"{option}: {name!r} would hide the builtin {name}"
            f"{'()' if callable(getattr(builtins, name)) else ''}; choose another name"
        )


# RunPod's endpoint ids are lower-case letters and digits; other RunPod-compatible servers
# (the local endpoint: "local") name theirs with letters, digits, - and _.
_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_ENDPOINT_FORMS = "expected http(s)://HOST[:PORT]/v2/ENDPOINT_ID or a RunPod endpoint id"


def endpoint_address(value: str, where: str = "--endpoint") -> str:
    """`value` if it is an endpoint id or a RunPod-compatible endpoint URL; UsageError naming
    `where` otherwise. Checked before any request, since a malformed address would only show
    as a connection that keeps failing."""
    if "://" not in value:
        if not _ENDPOINT_ID.match(value):
            raise UsageError(
                f"{where}: {value!r} is not an endpoint id (letters, digits, - and _) or an"
                f" endpoint URL; {_ENDPOINT_FORMS}"
            )
        return value
    problem = _url_problem(value)
    if problem is not None:
        raise UsageError(
            f"{where}: {value!r} is not an endpoint URL ({problem}); {_ENDPOINT_FORMS}"
        )
    return value


def _url_problem(url: str) -> str | None:
    """What makes `url` unusable as http(s)://HOST[:PORT]/.../v2/ID, or None."""
    if any(char.isspace() or not char.isprintable() for char in url):
        return "it holds spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return f"the scheme is {parts.scheme!r}, not http or https"
    if not _valid_host(parts):
        return "it names no valid host"
    if parts.query or parts.fragment:
        return "it has a query or fragment"
    *_, v2, endpoint_id = ["", "", *parts.path.rstrip("/").split("/")]
    if v2 != "v2" or not _ENDPOINT_ID.match(endpoint_id):
        return "its path does not end in /v2/ENDPOINT_ID"
    return None


def _valid_host(parts: SplitResult) -> bool:
    host = parts.hostname or ""
    if "[" in parts.netloc:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    labels = host.split(".")
    return bool(host) and all(
        label and all(c.isalnum() or c in "-_" for c in label) for label in labels
    )


def check_requirements(specs: tuple[str, ...]) -> None:
    """Each --deps item is a pip requirement ("numpy", "torch>=2.3", "pkg[extra]==1.0"), a URL,
    or a path; installer options are refused, as the worker would refuse them."""
    from packaging.requirements import InvalidRequirement, Requirement

    for spec in specs:
        if spec.startswith("-"):
            raise UsageError(f"--deps: {spec!r} is an installer option; only packages are allowed")
        if "://" in spec or spec.startswith((".", "/", "~")):
            continue
        try:
            Requirement(spec)
        except InvalidRequirement as exc:
            raise UsageError(
                f"--deps: {spec!r} is not a pip requirement ({exc}); write e.g. numpy,"
                " 'torch>=2.3' or 'pkg[extra]==1.0'"
            ) from None


def check_apt_names(names: tuple[str, ...]) -> None:
    for name in names:
        if not _APT_NAME.match(name):
            raise UsageError(
                f"--system-deps: {name!r} is not an apt package name (lower-case letters, digits"
                " and + - . , optionally :arch and =version, e.g. ffmpeg, libgl1)"
            )


def parse_env(groups: list[list[str]] | None) -> tuple[tuple[str, str], ...]:
    """--env NAME=VALUE, or NAME alone for the kernel's own value of it."""
    pairs: dict[str, str] = {}
    for item in (i for g in groups or [] for i in g):
        name, has_value, value = item.partition("=")
        if not ENV_NAME.match(name):
            raise UsageError(f"--env: {item!r} is not NAME=VALUE or NAME (an environment name)")
        if not has_value:
            if name not in os.environ:
                raise UsageError(f"--env: {name} is not set in the kernel; write {name}=VALUE")
            value = os.environ[name]
        if "\0" in value:
            raise UsageError(
                f"--env: the value of {name} holds a NUL character, which no"
                " environment variable can hold"
            )
        pairs[name] = value
    return tuple(pairs.items())


_SESSION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def session_name(name: str, where: str = "--session") -> str:
    """A session name as the worker keys it; UsageError naming `where` otherwise."""
    if not _SESSION_NAME.match(name) or name == "off":
        raise UsageError(
            f"{where}: {name!r} is not a session name (letters, digits, _ . and -, up to 64"
            " characters; not 'off')"
        )
    return name


def _session(args: argparse.Namespace, defaults: Any) -> str | None:
    if args.session and args.no_session:
        raise UsageError("--session and --no-session cannot be used together: choose one")
    if args.no_session:
        return None
    if args.session:
        return session_name(args.session)
    return defaults.session or None


def build(args: argparse.Namespace, defaults: Any) -> CellOptions:
    """Validate parsed arguments against each other and fill in configured defaults."""
    if args.cpu and args.gpu:
        raise UsageError("--cpu and --gpu cannot be used together: choose one")
    if args.local and args.endpoint:
        raise UsageError("--local and --endpoint cannot be used together: choose one")
    timeout = defaults.timeout if args.timeout is None else args.timeout
    if not 0 < timeout <= MAX_TIMEOUT:
        raise UsageError(
            f"--timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT:.0f}"
            f" (7 days), not {timeout:g}"
        )
    if args.out is not None:
        _check_new_name("--out", args.out)
    map_name, map_items = _fan_out(args)
    gpus = tuple(g for group in args.gpu or [] for g in group) or (
        () if args.cpu else _default_gpus(defaults)
    )
    deps = split_packages([list(defaults.default_deps), *(args.deps or [])])
    check_requirements(deps)
    system_deps = split_packages([list(defaults.default_system_deps), *(args.system_deps or [])])
    check_apt_names(system_deps)
    return CellOptions(
        gpus=gpus,
        gpu_ids=_gpu_ids(gpus),
        cpu=args.cpu,
        dependencies=deps,
        system_dependencies=system_deps,
        endpoint=_endpoint(args, defaults),
        local=args.local or defaults.local,
        timeout=timeout,
        name=args.name,
        out=args.out,
        stream=not args.no_stream,
        quiet=args.quiet,
        verbose=args.verbose or defaults.verbose,
        send=_split_names("--send", args.send),
        drop=_split_names("--drop", args.drop),
        env=parse_env(args.env),
        queue_timeout=defaults.queue_timeout,
        worker=worker_settings(defaults),
        session=_session(args, defaults),
        session_idle_timeout=defaults.session_idle_timeout,
        session_value_limit=defaults.session_value_limit,
        session_replay=defaults.session_replay,
        background=args.bg,
        detach=_detach(args),
        map_name=map_name,
        map_items=map_items,
        workers=args.workers,
        retries=args.retries or 0,
        batch=args.batch,
        **_data_files(args, defaults),
    )


def _fan_out(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """--map NAME in EXPR as (NAME, EXPR), the expression evaluated when the cell runs;
    --workers checked with it."""
    if args.workers is not None and args.workers < 1:
        raise UsageError(
            f"--workers is how many --map jobs run at once: 1 or more, not {args.workers}"
        )
    if args.retries is not None and args.retries < 0:
        raise UsageError(
            f"--retries is how often a failed --map item runs again: 0 or more, not {args.retries}"
        )
    if args.batch is not None and args.batch < 1:
        raise UsageError(
            f"--batch is how many --map items one job runs: 1 or more, not {args.batch}"
        )
    if not args.map:
        if args.workers is not None:
            raise UsageError("--workers sets how many --map jobs run at once: use it with --map")
        if args.retries is not None:
            raise UsageError("--retries runs a failed --map item again: use it with --map")
        if args.batch is not None:
            raise UsageError("--batch sets how many --map items one job runs: use it with --map")
        return None, None
    tokens = args.map
    if tokens and tokens[0].endswith(","):
        raise UsageError(
            f"--map {' '.join(tokens)}: --map binds one NAME; unpack it in the cell, e.g."
            " --map pair in zip(xs, ys), then `x, y = pair`"
        )
    if len(tokens) < 3 or tokens[1] != "in":
        raise UsageError(
            f"--map {' '.join(tokens)}: write --map NAME in EXPR, e.g. --map lr in [0.1, 0.01]"
        )
    _check_identifier("--map", tokens[0])
    if args.detach:
        raise UsageError(
            "--detach does not combine with --map yet (`%tetra attach` follows one job, a map"
            " has many): drop --detach, and keep the kernel running until the map ends"
        )
    return tokens[0], " ".join(tokens[2:])


def _detach(args: argparse.Namespace) -> bool:
    """--detach, which only a background cell can be: a cell the kernel waits for ends with it."""
    if args.detach and not args.bg:
        raise UsageError(
            "--detach keeps a background cell's job running after the kernel exits: use it with"
            " --bg (%%tetra --bg --detach)"
        )
    return bool(args.detach)


def _data_files(args: argparse.Namespace, defaults: Any) -> dict[str, tuple[str, ...]]:
    """--files (after TetraMagic.files), matched here, and --get's patterns, both checked."""
    from tetra_magic.cell import files

    setting = files.patterns([list(defaults.files)], "TetraMagic.files")
    sent = files.expand(setting, "TetraMagic.files") + files.expand(
        files.patterns(args.files, "--files"), "--files"
    )
    return {"files": tuple(dict.fromkeys(sent)), "get": files.patterns(args.get, "--get")}


def _endpoint(args: argparse.Namespace, defaults: Any) -> str | None:
    """--endpoint's address, else TetraMagic.endpoint's, each checked; None for neither."""
    if args.endpoint is not None:
        return endpoint_address(args.endpoint)
    if defaults.endpoint:
        return endpoint_address(defaults.endpoint, "TetraMagic.endpoint")
    return None


def _gpu_ids(gpus: tuple[str, ...]) -> tuple[str, ...]:
    """RunPod's ids for the --gpu names (each may list several, comma-separated); an unknown
    name is the user's typo, so a UsageError like every other bad option."""
    try:
        return tuple(gpu_ids([g for gpu in gpus for g in gpu.split(",")]))
    except UnknownGpu as exc:
        raise UsageError(str(exc)) from None


def _default_gpus(defaults: Any) -> tuple[str, ...]:
    return tuple(g for g in defaults.default_gpu.split(",") if g.strip())
