"""What the notebook and the worker's runtime say to each other: the spec of a cell (with its
session part), the payload that comes back, and the marker strings both sides read.

One definition for both sides: the kernel builds the spec (tetra_magic/cell/packing.py, `make_spec`)
and reads the payload (tetra_magic/cell/outcome.py); the runtime reads the spec and builds the
payload. Everything is plain data (str, bytes, numbers, lists, dicts), cloudpickled as the
request's `spec` argument and as its result, so any worker that runs `function_code` carries it.

Our worker (worker/frames.py) reads the display frames with constants of its own, since it
never imports tetra_magic; tests/runtime/test_runtime_contract.py checks that the two agree.
"""

from __future__ import annotations

from typing import Any, TypedDict

# A display message, written into the cell's stdout among its prints: START + JSON + END.
FRAME_START = "\x00tetra-display:"
FRAME_END = "\n"
# The message, framed the same way, that says a --map shard's next item starts here
# (runtime/batch.py): what follows is that item's output.
ITEM_MESSAGE = '{"type":"item","index":'

# Where a progress update (the published worker's live output) carries the cell's chunks.
PROGRESS_KEY = "tetra_progress"
# The line a cell's exception carries home as its last note: this, then the packed exception.
EXCEPTION_NOTE = "tetra-exception:"
# The file names of the runtime's code on the worker (its modules, and the request's function
# code under our worker) start with this: home cuts those frames from a cell's traceback.
RUNTIME_SOURCE_PREFIX = "<tetra-runtime "

# A definition that travels as source: [its source, the file it was defined in, first line].
Definition = list[Any]


class RuntimeSources(TypedDict):
    """The runtime package as it travels: each module's source by its name in the package,
    and a hash of them all, which names the version installed on the worker."""

    hash: str
    modules_zlib: bytes  # zlib-compressed JSON: {module name: source}


class SessionPart(TypedDict, total=False):
    """spec["session"]: the session a cell runs in (tetra_magic/session/model.py makes it)."""

    key: str  # "<kernel id>:<name>"
    id: str  # this incarnation: a session the worker holds under another id was lost
    new: bool  # make it (again), rather than expect it
    cell: int  # the cell's number in the session, naming the values kept for references
    reads: list[str]
    homes: list[str]  # names whose value the notebook holds a copy of
    released: list[str]  # kept values the notebook holds no reference to any more
    value_limit: int  # bytes: a larger value stays in the session
    pull: list[str]  # a request that runs no cell: fetch these
    end: bool  # a request that runs no cell: free the session


# --- spec["home"]: the notebook's logging, warning and display setup (runtime/at_home.py) ---


class HandlerSetup(TypedDict):
    """One of the root logger's handlers at home that writes into the cell's output."""

    stream: str  # "stdout" or "stderr": the cell's stream it writes to
    level: int
    fmt: str | None  # its Formatter's (None: the default, "%(message)s")
    datefmt: str | None
    style: str  # "%", "{" or "$"


class LoggingSetup(TypedDict):
    level: int  # the root logger's
    handlers: list[HandlerSetup]
    levels: dict[str, int]  # named loggers given a level of their own
    disable: int  # logging.disable(level): records at or below it dropped (0: none)
    capture_warnings: bool  # logging.captureWarnings(True): warnings go to "py.warnings"


class WarningFilter(TypedDict):
    """An entry of `warnings.filters`; a pattern with flags None matches as a plain string
    (as the interpreter's own default filters do), else as a regex compiled with the flags."""

    action: str
    message: str | None
    message_flags: int | None
    category: str  # "module:qualname"
    module: str | None
    module_flags: int | None
    lineno: int


class FigureSetup(TypedDict):
    """How the kernel's inline backend shows a matplotlib figure (InlineBackend's settings,
    `%config InlineBackend...`, `set_matplotlib_formats`), for runtime/figures.py."""

    formats: list[str]  # "png", "retina", "jpeg", "svg", "pdf"
    print_kwargs: dict[str, Any]  # print_figure_kwargs: {"bbox_inches": "tight"}, ...
    rc: dict[str, Any]  # InlineBackend.rc: rcParams the inline backend sets
    params: dict[str, Any]  # rcParams the kernel's matplotlib differs in from its defaults


class DisplaySetup(TypedDict):
    """The kernel's settings that shape what a cell shows."""

    figures: FigureSetup
    # plotly.io.renderers.default as the kernel has it (or would pick): "plotly_mimetype"...
    plotly_renderer: str | None


class HomeSetup(TypedDict):
    logging: LoggingSetup
    warnings: list[WarningFilter]
    display: DisplaySetup
    # a notebook's kernel (IPKernelApp in its config): tqdm.auto picks the widget bar there
    notebook: bool


class _SpecFields(TypedDict):
    filename: str
    source: str
    binds: list[str]
    deletes: list[str]
    has_last_expr: bool
    # {alias: [module, submodules the cell uses]} of the notebook's modules the cell reads
    modules: dict[str, list[str]]
    python: str  # the notebook's "major.minor"
    sources: dict[str, str]  # the text of notebook files the shipped definitions come from
    definitions: dict[str, Definition]  # notebook definitions shipped as source
    env: dict[str, str]
    timeout: float | None
    aliases: dict[str, str]  # notebook names bound to one object: {name: its first name}
    # What the kernel's analysis of the cell found, so the worker parses it only to run it:
    cell_definitions: dict[str, Definition]  # the cell's top-level def/class statements
    with_targets: list[str]  # names `with ... as NAME` binds
    imported: list[str]  # names import statements bind
    submodules: dict[str, list[str]]  # `import a.b.c` at the cell's level: {"a": ["a.b.c"]}
    runtime: RuntimeSources
    home: HomeSetup  # the notebook's logging, warning and display setup, for the cell only
    # {top-level name: the package} of the notebook's own modules the cell needs
    local_modules: dict[str, LocalPackage]
    # Data files (runtime/files.py): --files, {path relative to the cell's working
    # directory: sha256}, and their contents by sha256; --get, the patterns to bring back.
    files: dict[str, str]
    file_contents: dict[str, bytes]
    # files an earlier cell sent, deleted at home since: {path: sha256 as sent}
    files_gone: dict[str, str]
    get: list[str]
    # every --deps the notebook declared so far (runtime/shared_packages.py)
    declared: list[str]


class LocalPackage(TypedDict):
    """A module or package the cell imports from the notebook's own files (beside the
    notebook, or on a path the user added), which the worker does not have: its sources, as
    they are at home when the cell is sent (tetra_magic/cell/local_modules.py; the worker
    imports them with runtime/local_modules.py)."""

    hash: str  # of its files and their text: the worker keeps what it imported while it holds
    # {module name: [its file at home, its source]}: a package's own is its __init__.py, and a
    # folder without one has its folder and an empty source
    files: dict[str, list[str]]


class BatchPart(TypedDict):
    """spec["batch"]: a --map shard, the cell run once per item (runtime/batch.py)."""

    name: str  # the name each item is bound to: --map NAME in ...
    indices: list[int]  # the items' places among all of the map's: their output's tags
    items: list[bytes]  # each item's blob, loaded just before its run


class Spec(_SpecFields, total=False):
    """What the worker needs to run one cell (the request's `spec` argument)."""

    session: SessionPart
    batch: BatchPart


class Chunk(TypedDict):
    kind: str  # "stdout", "stderr"
    text: str


class Raised(TypedDict):
    """A cell's exception on the published worker, as the notebook shows it."""

    type: str
    traceback: str


class Portable(TypedDict):
    """A value as it can best travel: its blob, and what shows it where the blob cannot load."""

    blob: bytes | None
    reason: str | None
    repr: str | None
    mime: dict[str, Any]
    metadata: dict[str, Any]  # of `mime`'s entries: a retina figure's size
    # the value shows itself (`_ipython_display_`: a plotly figure): a display output, no Out
    displayed: bool


class Description(TypedDict, total=False):
    """What a value that stays in a session is, without fetching it."""

    type: str
    size: int | None
    device: str | None
    over: bool  # the size is where pickling stopped, over the limit
    reason: str  # why it cannot be pickled at all
    ref: str  # the id of the kept value, for the notebook's remote reference


class Payload(TypedDict, total=False):
    """What run_cell returns: the cell's results (values, modules, deletions, the last
    expression's value), or a session's answer to a request that ran no cell."""

    values: dict[str, bytes]
    modules: dict[str, list[str]]
    errors: dict[str, str]  # a value that could not travel, and why
    deleted: list[str]
    changed: list[str]  # inputs changed in place
    aliases: dict[str, str]
    refs: dict[str, Description]  # values that stayed in the session
    imported: list[str]
    drawn: list[str]  # values that are matplotlib figures, axes, or arrays of them
    last: Portable | None
    definitions: dict[str, Definition]  # the worker's definitions the values refer to
    # a session cell: its summary; a lost session: {"lost": True, ...}; end: what was freed
    session: dict[str, Any]
    described: dict[str, Description | None]
    output: list[Chunk]  # the published worker: every chunk, also sent as progress
    raised: Raised  # the published worker: the cell's exception
    # --get (runtime/files.py): {relative path: content} of the files the patterns matched,
    # and the patterns that matched none
    got: dict[str, bytes]
    got_missing: list[str]
    # pandas' display options the cell changed (runtime/display_options.py), {option: value}
    display_options: dict[str, Any]
    # a --map shard (runtime/batch.py): each item's own payload in the order of spec["batch"],
    # {"raised": ...} for an item that raised
    items: list[Payload]
