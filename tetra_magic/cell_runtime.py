"""The code that runs a cell on the worker.

This module's source is sent as the request's `function_code` and `run_cell` is the function the
worker calls, so it must be self-contained: standard library and cloudpickle only, imports inside
the functions, nothing from tetra_magic. That is what lets the published tetra worker run a cell
too. (The kernel imports a few of its helpers as well, so both sides share one definition.)

Values travel as pickles inside the arguments and the result, one blob per name, so a value that
fails to load on one side is named and the others still arrive. How the notebook's own functions
and classes travel is `MainNames`' job: by name, with the source of their definition, never as
bytecode when that can be helped (see its docstring).
"""


def run_cell(spec, blobs):
    """Run the cell described by `spec` with the notebook values in `blobs`; return the blobs
    of what it bound or changed in place, the names it deleted and its last expression's value.
    What it displays goes out with its prints, through the display runtime. On the published
    worker, also the cell's output, which it sent live as progress updates, and an exception
    the cell raised, as "raised": that worker's own report of a failure puts its log records in
    front of the cell's output (stderr and logging merged into stdout) and its own frames on
    the traceback, so the cell's failure comes home in the result, as the cell showed it.

    Its --env variables, and the stand-ins for stdin, last for this cell only, however it ends:
    the same process runs later cells (other kernels' too, on the published worker)."""
    restore = _for_this_cell(spec.get("env") or {})
    try:
        live = LiveOutput.on_published_worker(spec.get("timeout"))
        if live is None:
            return _run_cell(spec, blobs)
        with live:
            try:
                out = _run_cell(spec, blobs)
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                # sys.exit() too: raised on, it would end that worker's process (and the job)
                out = {"raised": _raised(exc)}
        out["output"] = live.chunks
        return out
    finally:
        restore()


def _raised(exc):
    """The cell's exception as the notebook shows it: its type's name, and its traceback from
    the cell's first frame on (the runtime's frames, and the worker's above them, cut)."""
    import os
    import traceback

    runtime = run_cell.__code__.co_filename
    machinery = os.path.dirname(traceback.__file__) + os.sep + "asyncio" + os.sep
    frames = traceback.extract_tb(exc.__traceback__)
    while frames and (frames[0].filename == runtime or frames[0].filename.startswith(machinery)):
        frames.pop(0)
    report = traceback.TracebackException.from_exception(exc)
    report.stack = traceback.StackSummary.from_list(frames)
    return {"type": type(exc).__name__, "traceback": "".join(report.format())}


def _run_cell(spec, blobs):
    import builtins
    import sys
    import types

    _register_sources(spec.get("sources") or {})
    info = spec.get("session")
    space = session = None
    if info is not None:
        space = _runtime_module("tetra_sessions", info["runtime"])
        if info.get("end"):
            return {"session": space.end(info["key"])}
        session, warm = space.open_session(info)
        if session is None:
            return {"session": warm}  # lost: nothing runs
    display = _runtime_module("tetra_display", spec["display"])
    display.begin()
    # The cell runs as `__main__`, as a notebook cell does at home: pickle, copy and
    # multiprocessing find the cell's functions and classes by name in sys.modules["__main__"].
    # A session's cells share their own `__main__`, which lives on between them.
    main = session.main if session is not None else types.ModuleType("__main__")
    namespace = main.__dict__
    namespace.update({"__builtins__": builtins, "get_ipython": _Shell})
    namespace["display"] = display.display_function()
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        names = MainNames(namespace, spec.get("definitions"), blobs, spec["modules"])
        if session is not None:
            names.kept = session.kept
        if session is not None and info.get("pull") is not None:
            display.end()
            space.refer_to(session, names, {})
            return space.pull(session, names, info["pull"])
        held = {id(value) for value in namespace.values()} if session is not None else set()
        inputs = _load_inputs(names, spec)
        cell_definitions = _cell_definitions(spec["filename"], spec["source"])
        dump = None
        if session is None:
            names.refer_to(cell_definitions)
        else:
            # What the session held already came as references to its own objects: only the
            # notebook's copies of them are checked for changes in place (a model is not).
            inputs = {name: value for name, value in inputs.items() if id(value) not in held}
            space.refer_to(session, names, cell_definitions)
            inputs.update(space.home_copies(names, info))
            dump = space.dumper(session, names, info)
        digests = {name: digest(names, value) for name, value in inputs.items()}
        before = dict(namespace)
        try:
            last = _run_source(spec, names)
        except BaseException:
            if session is not None:  # as in the notebook: a failed cell binds nothing
                namespace.clear()
                namespace.update(before)
            raise
        finally:
            display.end()
        names.refresh()
        out = _pack_outputs(names, spec, last, inputs, digests, dump)
        out["definitions"] = names.sent
        if session is not None:
            session.cells += 1
            session.at_home.update({name: namespace.get(name) for name in names.sent})
            out["session"] = space.summary(session, warm)
            out["described"] = {name: session.described.get(name) for name in out["values"]}
        return out
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _run_source(spec, names):
    """Run the cell's code; its last expression's value (None without one). An exception the
    cell raises is packed for the notebook, which raises it as the user's own exception: the
    pack rides as a last note on the exception, since every worker (the published one too)
    sends the exception's traceback text home, notes included."""
    import ast

    filename, source, namespace = spec["filename"], spec["source"], names.namespace
    _register_sources({filename: source})
    tree = ast.parse(source, filename)
    try:
        if not spec["has_last_expr"]:
            return _execute(tree, filename, namespace)
        expr = tree.body.pop()
        _execute(tree, filename, namespace)
        return _execute(ast.Expression(expr.value), filename, namespace)
    except Exception as exc:
        names.refresh()
        packed = _pack_exception(names, exc)
        if len(packed) <= _NOTE_LIMIT and hasattr(exc, "add_note"):
            exc.add_note(_EXCEPTION_NOTE + packed)
        raise


def _runtime_module(name, source):
    """A runtime whose source the request carries (the display machinery,
    tetra_magic/remote_display.py; sessions, tetra_magic/session_runtime.py), made the module
    `name` once per process. Its classes pickle by value, so a stand-in HTML(...) can come home
    as a value. A newer source keeps the sessions the older one held."""
    import sys
    import types

    import cloudpickle

    module = sys.modules.get(name)
    if module is None or source != module.SOURCE:
        fresh = types.ModuleType(name)
        fresh.SOURCE = source
        _register_sources({f"<{name}>": source})
        exec(compile(source, f"<{name}>", "exec"), fresh.__dict__)
        if module is not None and hasattr(module, "SESSIONS"):
            fresh.SESSIONS = module.SESSIONS
        sys.modules[name] = module = fresh
        cloudpickle.register_pickle_by_value(module)
    return module


def _for_this_cell(env):
    """Set the cell's --env variables, and make what would wait for someone to type (input(),
    getpass(), breakpoint(), reading sys.stdin) fail at once, saying how to pass the value
    instead: nobody can type on a worker. Returns what puts everything back."""
    import builtins
    import getpass
    import os
    import sys

    saved_env = {name: os.environ.get(name) for name in env}
    replaced = {
        (builtins, "input"): _no_stdin("input()"),
        (getpass, "getpass"): _no_stdin("getpass()"),
        (sys, "breakpointhook"): _no_stdin("breakpoint()"),
        (sys, "stdin"): _stdin_stand_in(sys.stdin),
    }
    saved = {key: getattr(*key) for key in replaced}
    os.environ.update(env)
    for (owner, attr), value in replaced.items():
        setattr(owner, attr, value)

    def restore():
        for (owner, attr), value in saved.items():
            setattr(owner, attr, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return restore


def _stdin_message(what):
    if what == "breakpoint()":
        return (
            "breakpoint() waits for debugger commands, and stdin is not available on the"
            " worker: debug the code in a cell without %%tetra"
        )
    return (
        f"{what} waits for someone to type, and stdin is not available on the worker: ask in"
        " the notebook instead (`value = input()` in a cell without %%tetra) and use `value`"
        " in this cell; for a secret, set it in the kernel's environment and pass it with"
        " --env NAME"
    )


def _no_stdin(what):
    def refuse(*args, **kwargs):
        raise EOFError(_stdin_message(what))

    return refuse


def _stdin_stand_in(stdin):
    """sys.stdin during a cell: reading it ends the cell with the message, rather than with a
    bare EOF from /dev/null (or a hang on a worker whose stdin is a terminal). The rest is the
    stream's (`stdin`, the process's own: its fd, its encoding), so code that looks at stdin or
    tidies it up, as multiprocessing's children do, works as it does at home."""
    import io

    class NoStdin(io.TextIOBase):
        encoding = getattr(stdin, "encoding", None) or "utf-8"

        def readable(self):
            return True

        def fileno(self):
            if stdin is None:
                raise io.UnsupportedOperation("stdin has no file descriptor")
            return stdin.fileno()

        def read(self, *args):
            raise EOFError(_stdin_message("reading sys.stdin"))

        readline = readlines = read

    return NoStdin()


def _execute(tree, filename, namespace):
    """Run a module (or evaluate an expression) in `namespace`; top-level `await` works, as
    IPython's autoawait lets it at home."""
    import ast
    import asyncio
    import inspect

    mode = "eval" if isinstance(tree, ast.Expression) else "exec"
    code = compile(tree, filename, mode, flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    value = eval(code, namespace)
    if code.co_flags & inspect.CO_COROUTINE:
        value = asyncio.run(value)
    return value


def _register_sources(sources):
    """Make notebook cells readable by linecache, so tracebacks and `inspect.getsource` show
    the lines of functions defined in them."""
    import linecache

    for name, text in sources.items():
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)


def _load_inputs(names, spec):
    """Every value the kernel sent, bound in the namespace; {name: value} of the data among
    them (not modules, not definitions), whose changes in place the notebook must get back."""
    import platform

    inputs = {}
    for name in [*spec["modules"], *names.definitions, *names.blobs]:
        try:
            names.ensure(name)
        except VersionMismatch as exc:
            message = f"notebook variable {name!r} was not loaded on the worker: {exc}"
            raise RuntimeError(message) from None
        except Exception as exc:
            hint = ""
            if tuple(spec["python"]) != platform.python_version_tuple()[:2]:
                notebook, here = ".".join(spec["python"]), platform.python_version()
                hint = f" (the notebook runs Python {notebook}, this worker {here})"
            raise RuntimeError(
                f"notebook variable {name!r} could not be loaded on the worker:"
                f" {type(exc).__name__}: {exc}{hint}"
            ) from None
        if name in names.blobs and name not in names.definitions and name in names.namespace:
            inputs[name] = names.namespace[name]
    for name, first in (spec.get("aliases") or {}).items():
        if first in inputs:  # `b = a` in the notebook: one object here too
            names.namespace[name] = inputs[name] = inputs[first]
    return inputs


def _import(alias, names):
    """The module `names[0]` for `alias`, with the submodules the cell uses imported too."""
    import importlib

    try:
        module = importlib.import_module(names[0])
        for submodule in names[1:]:
            importlib.import_module(submodule)
    except ImportError as exc:
        raise ImportError(
            f"notebook variable {alias!r} is the module {names[0]!r}, which cannot be imported on"
            f" the worker ({type(exc).__name__}: {exc}); add it with --deps"
        ) from None
    return module


def _cell_definitions(filename, source):
    """{name: [source, filename, line]} of the functions and classes the cell defines at its
    top level: those can travel home as source."""
    import ast

    lines = source.splitlines(True)
    found = {}
    for node in ast.parse(source, filename).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            text = "".join(lines[first - 1 : node.end_lineno])
            found[node.name] = [text, filename, first]
    return found


def digest(names, value):
    """A fingerprint of `value`'s pickle (None if it cannot be pickled here)."""
    import hashlib

    try:
        return hashlib.blake2b(names.dumps(value), digest_size=16).digest()
    except Exception:
        return None


def _pack_outputs(names, spec, last, inputs, digests, dump=None):
    """The blobs of what the cell bound, and of the inputs it changed in place: those are
    pickled again and compared with their pickle as they arrived, so an unchanged input does not
    travel back. In a session, `dump(name, value)` gives a value's blob, or the description
    of a value that stays on the worker (a remote reference, in `refs`).

    Names bound to one mutable object (`b = a`, `c = arr` of an input) come home as one object:
    it travels once, under the first name, and `aliases` maps each other name to that one (an
    input's first name is the notebook's own object). In a session the alias's blob travels
    too: `dump` notes what came home by name, and so does the notebook's session."""
    import hashlib
    import types

    values, modules, errors, deleted, changed, refs, aliases = {}, {}, {}, [], [], {}, {}
    namespace = names.namespace
    first = {  # id of a mutable object -> the name it comes home under
        id(value): name
        for name, value in reversed(inputs.items())
        if namespace.get(name, values) is value and _one_object(value)
    }

    def send(name, value, blob=None):
        holder = first.get(id(value), name)
        if holder != name and not dump:
            aliases[name] = holder
            return
        try:
            sent = dump(name, value) if dump else blob or names.dumps(value)
        except Exception as exc:
            errors[name] = f"{type(value).__name__} cannot be pickled: {exc}"
            return
        if isinstance(sent, dict):
            refs[name] = sent
            return
        values[name] = sent
        if holder != name:
            aliases[name] = holder
        elif _one_object(value):
            first.setdefault(id(value), name)

    for name in spec["binds"]:
        if name not in namespace:
            if name in spec["deletes"]:
                deleted.append(name)
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            modules[name] = [value.__name__, *_submodules(name, spec["source"])]
            continue
        if inputs.get(name, values) is value:
            continue  # `arr *= 2`: the input itself, changed in place or not (below)
        send(name, value)
    for name, value in inputs.items():
        if name in values or name in errors or name in refs or name in aliases:
            continue
        if name not in namespace:
            continue
        if namespace[name] is not value:  # rebound by a function's `global name`
            send(name, namespace[name])
            continue
        try:
            blob = names.dumps(value)
        except Exception:
            continue
        if hashlib.blake2b(blob, digest_size=16).digest() != digests[name]:
            send(name, value, blob)
            changed.append(name)
    errors = _worth_a_note(errors, namespace, spec["source"])
    out = {"values": values, "modules": modules, "errors": errors, "deleted": deleted}
    out["changed"] = changed
    out["aliases"] = aliases
    out["refs"] = refs
    out["imported"] = _imported_names(spec["source"])
    has_last = spec["has_last_expr"] and last is not None
    out["last"] = (
        names.portable(last, dump and (lambda value: dump("", value))) if has_last else None
    )
    return out


def _one_object(value):
    """Whether names bound to `value` must stay bound to one object at home: not for values
    that cannot change (a number, a string, a tuple), nor for functions and classes, which come
    home by name."""
    import types

    immutable = (int, float, complex, str, bytes, tuple, frozenset, range, type(None))
    return not isinstance(value, (*immutable, type, types.FunctionType))


def _submodules(name, source):
    """The submodules `import name.sub` statements in the cell load under `name`: the kernel
    imports them too, so `name.sub` works there as it does after the same import at home."""
    import ast

    return sorted(
        alias.name
        for node in _cell_level(source)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.asname is None and alias.name.startswith(name + ".")
    )


def _worth_a_note(errors, namespace, source):
    """The values that could not travel which the user would miss. Left out without a note:
    what is spent or only means something in the worker's process (see `_spent`), and names a
    `with` statement bound, whose block has already closed them (files, pools, sessions)."""
    with_bound = _with_targets(source)
    return {
        name: reason
        for name, reason in errors.items()
        if name not in with_bound and not _spent(namespace[name])
    }


def _with_targets(source):
    """The names `with ... as NAME` statements bind."""
    import ast

    names = set()
    for node in _cell_level(source):
        if isinstance(node, (ast.With, ast.AsyncWith)):
            targets = [item.optional_vars for item in node.items if item.optional_vars]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _imported_names(source):
    """The names import statements bind: what the cell imported to use, not its results."""
    import ast

    return sorted(
        alias.asname or alias.name.split(".")[0]
        for node in _cell_level(source)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
        if alias.name != "*"
    )


def _cell_level(source):
    """The cell's nodes outside functions and classes (in loops and branches too): those
    that bind the cell's own names."""
    import ast

    todo = list(ast.parse(source).body)
    while todo:
        node = todo.pop()
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            yield node
            todo.extend(ast.iter_child_nodes(node))


def _spent(value):
    """Whether a value is over or bound to this process, so nobody misses it at home: a closed
    file or socket, a finished thread or process, an exhausted generator, a lock or other
    thread synchronisation, or a non-empty list, tuple, set or dict of only such things."""
    import inspect
    import sys
    import threading

    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return bool(value) and all(_spent(item) for item in value)
    if inspect.isgenerator(value):
        return inspect.getgeneratorstate(value) == inspect.GEN_CLOSED
    socket, process = sys.modules.get("socket"), sys.modules.get("multiprocessing.process")
    if socket is not None and isinstance(value, socket.socket):
        return value.fileno() == -1
    runs = (threading.Thread, process.BaseProcess) if process else threading.Thread
    if isinstance(value, runs):
        return not value.is_alive()
    sync = (threading.Condition, threading.Semaphore, threading.Event, threading.Barrier)
    locks = (type(threading.Lock()), type(threading.RLock()))
    return isinstance(value, (*sync, *locks)) or _safe(getattr, value, "closed") is True


_EXCEPTION_NOTE = "tetra-exception:"
_NOTE_LIMIT = 256 * 1024  # a larger exception comes home as a stand-in of the same name


def exception_note(text):
    """`text` (a remote traceback) without the note `_run_source` added, and that note's pack
    (None if it has none)."""
    kept, packed = [], None
    for line in text.splitlines(True):
        note = line.lstrip(" |")  # an exception group's notes are inside its box
        if note.startswith(_EXCEPTION_NOTE):
            packed = note[len(_EXCEPTION_NOTE) :].strip()
        else:
            kept.append(line)
    return "".join(kept), packed


def _pack_exception(names, exc):
    """The exception the cell raised and those chained to it, each pickled on its own (None
    where one cannot be), with the links between them: [[blob, cause, context, suppress], ...],
    as one base64 line."""
    import base64
    import pickle

    chain, index = [], {}

    def visit(error):
        if error is None or len(chain) >= 32:
            return None
        if id(error) in index:
            return index[id(error)]
        index[id(error)] = position = len(chain)
        chain.append(None)
        try:
            blob = names.dumps(error)
        except Exception:
            blob = None
        cause, context = visit(error.__cause__), visit(error.__context__)
        chain[position] = [blob, cause, context, error.__suppress_context__]
        return position

    visit(exc)
    return base64.b64encode(pickle.dumps(chain)).decode("ascii")


# Types that are never a notebook definition: pickling skips the name lookup for them.
_PLAIN = (int, float, str, bytes, bool, complex, type(None), list, tuple, dict, set)
_HEADER = b"tetra-pickle"


class MainNames:
    """One side's `__main__` namespace (the notebook's, or the cell's on the worker) and how
    its objects travel to the other side.

    A function or class the notebook (or the cell) defined travels by name: the pickle holds a
    reference to it, resolved on loading against the other side's `__main__`, so a value of a
    notebook class comes back an instance of the notebook's very class, never a copy that would
    replace or patch it. Where the other side lacks the definition, its source goes along
    (`sent`) and is executed there in `__main__` on first use: source works across Python
    versions, and the functions get `__main__`'s globals as at home. What has no known source
    (a lambda, a function made inside another) goes as cloudpickle's bytecode, its globals
    still `__main__`'s; every blob's header says which Python made it and whether it holds
    bytecode, and such a blob is refused, before anything in it runs, on another minor version.

    `referable(name)` says whether the other side can have the top-level definition `name`:
    None (no), [] (it has it already), or [source, filename, line] (send that).
    """

    def __init__(self, namespace, definitions=None, blobs=None, modules=None, referable=None):
        self.namespace = namespace
        self.definitions = dict(definitions or {})  # name -> [source, filename, line]
        self.blobs = dict(blobs or {})
        self.modules = dict(modules or {})
        self.referable = referable or (lambda name: None)
        self.sent = {}  # definitions the other side needs, by name
        self.bytecode = []  # globals read by functions that went as bytecode
        self.bind = namespace.__setitem__
        self._known, self._ids, self._paths = {}, None, {}
        self._done = set()
        self._busy = set()
        self.kept = {}  # a session's values kept for the notebook's remote references

    def refer_to(self, cell_definitions, home=None):
        """On the worker, once the inputs are in: what the notebook already has (the inputs
        as they arrived, and `home`: {name: object} it has from before) is referred to by
        name; the cell's own top-level definitions travel as their source."""
        sent = [*self.blobs, *self.definitions]  # not the worker's own `display`, say
        home = {**(home or {})}
        home.update({name: self.namespace[name] for name in sent if name in self.namespace})

        def referable(name):
            if name in home and self.namespace.get(name) is home[name]:
                return []
            return cell_definitions.get(name)

        self.referable = referable
        self.refresh()

    def refresh(self):
        """Forget what was worked out about the namespace's names (the cell changed them)."""
        self._known, self._ids, self._paths, self.sent = {}, None, {}, {}

    # -- pickling -------------------------------------------------------------------------

    def dumps(self, value, files=None, to_cpu=True):
        """`value`'s blob: a header naming this Python and any bytecode inside, then the
        pickle."""
        import io

        body = io.BytesIO()
        header, _ = self.dump_body(value, body, files, to_cpu)
        return header + body.getvalue()

    def dump_body(self, value, file, files=None, to_cpu=True):
        """Pickle `value` into `file` as it goes (a file may stop it by raising); the header
        its blob starts with, and the GPU devices of the tensors met on the way."""
        import platform

        pickler = _pickler_class()(file, self, files, to_cpu)
        pickler.dump(value)
        python = ".".join(platform.python_version_tuple()[:2])
        code = pickler.code_of or "-"
        return b"%s %s %s\n" % (_HEADER, python.encode(), code.encode()), pickler.devices

    def portable(self, value, dump=None):
        """A value as it can best travel: its blob (None if it has none), its repr, and its
        rich representations, so the notebook can show it even where it cannot load it. A
        figure travels as its image only: the notebook shows it, and needs no matplotlib for
        that. `dump` (a session's) gives the blob, or a description where the value stays."""
        import sys

        display = sys.modules["tetra_display"]
        reason = None
        if display.is_figure(value):
            blob = None
        else:
            try:
                blob = (dump or self.dumps)(value)
            except Exception as exc:
                blob, reason = None, f"{type(value).__name__} cannot be pickled: {exc}"
            if isinstance(blob, dict):
                blob, reason = None, "it stays in the session"
        mime = (_safe(display.format, value) or ({}, {}))[0]
        return {"blob": blob, "reason": reason, "repr": _safe(repr, value), "mime": mime}

    def path(self, obj):
        """The name (or dotted path) under which the other side finds `obj`; None if it
        cannot. Worked out once per object (a class is met once per instance pickled)."""
        cached = self._paths.get(id(obj))
        if cached is not None and cached[0] is obj:
            return cached[1]
        path = self._path(obj)
        self._paths[id(obj)] = (obj, path)
        return path

    def _path(self, obj):
        if isinstance(obj, _PLAIN) or not _definition_like(obj):
            return None
        if self._ids is None:
            self._ids = {id(v): k for k, v in self.namespace.items() if _definition_like(v)}
        path = None
        qualname = getattr(obj, "__qualname__", None)
        if (
            getattr(obj, "__module__", None) == "__main__"
            and isinstance(qualname, str)
            and "<" not in qualname
            and _lookup(self.namespace, qualname) is obj
        ):
            path = qualname
        if path is None:
            path = self._ids.get(id(obj))
        if path is None:
            return None
        top = path.partition(".")[0]
        if top not in self._known:
            self._known[top] = self.referable(top)
        found = self._known[top]
        if found is None:
            return None
        if found:
            self.sent[top] = found
        return path

    # -- loading --------------------------------------------------------------------------

    def ensure(self, name):
        """Bind `name` in the namespace from what came for it (a module to import, a
        definition to execute, a blob to load), once; the names a definition uses first."""
        if name in self._done or name in self._busy:
            return
        self._busy.add(name)
        try:
            if name in self.modules:
                self.bind(name, _import(name, self.modules[name]))
            elif name in self.definitions:
                self._define(name)
            elif name in self.blobs:
                self.bind(name, self.load(name, self.blobs[name]))
        finally:
            self._busy.discard(name)
            self._done.add(name)

    def _define(self, name):
        source, filename, line = self.definitions[name]
        code = compile("\n" * (line - 1) + source, filename, "exec")
        for used in global_names(code):
            if used != name:
                self.ensure(used)
        exec(code, self.namespace)

    def load(self, label, blob):
        """The value in `blob`; refused, before anything in it runs, if it holds bytecode of
        another Python minor version."""
        import io
        import platform

        head, _, body = blob.partition(b"\n")
        parts = head.decode("utf-8", "replace").split(" ")
        if len(parts) != 3 or parts[0] != _HEADER.decode():
            raise ValueError(f"{label!r} is not a tetra pickle")
        made_by, code = parts[1], parts[2]
        here = ".".join(platform.python_version_tuple()[:2])
        if code != "-" and made_by != here:
            raise VersionMismatch(
                f"{label!r} holds {code}, compiled to bytecode by Python {made_by}; Python"
                f" {here} here cannot run another version's bytecode, so it was not loaded."
                " Functions and classes defined with def/class at the top level of a cell"
                " travel as source and work across versions; lambdas and functions made inside"
                " other functions do not"
            )
        unpickler = _unpickler_class()(io.BytesIO(body), self)
        builtins = self.namespace.get("__builtins__")
        try:
            return unpickler.load()
        finally:
            if builtins is not None:  # cloudpickle sets a loaded function's globals' builtins
                self.namespace["__builtins__"] = builtins

    def kept_value(self, ref):
        """The value the session keeps for the remote reference `ref`."""
        import pickle

        if ref not in self.kept:
            raise pickle.UnpicklingError(
                f"the session no longer holds the value of reference {ref!r} (it was rebuilt"
                " without it, or ended)"
            )
        return self.kept[ref]

    def resolve(self, path):
        """The definition at `path` in the namespace, defined from its source first if that
        came along."""
        import pickle

        top = path.partition(".")[0]
        self.ensure(top)
        if top not in self.namespace:
            raise pickle.UnpicklingError(f"{top!r} is not defined here")
        return _lookup(self.namespace, path)


class VersionMismatch(Exception):
    """A blob holds bytecode of another Python minor version."""


def _definition_like(obj):
    """Functions and classes, and wrappers of functions (functools.cache, decorators that use
    functools.wraps): what a `def` or `class` statement binds."""
    import types

    if isinstance(obj, (type, types.FunctionType)):
        return True
    try:
        return callable(obj) and "__wrapped__" in vars(obj)
    except TypeError:
        return False


def _lookup(namespace, path):
    top, *rest = path.split(".")
    value = namespace.get(top)
    for attr in rest:
        value = getattr(value, attr, None)
    return value


def global_names(code):
    """The global names `code` (and the code nested in it) reads: what a definition needs
    from `__main__` when it is executed and when its functions run."""
    import dis
    import types

    found = []
    for instruction in dis.get_instructions(code):
        loads = instruction.opname in ("LOAD_NAME", "LOAD_GLOBAL", "LOAD_FROM_DICT_OR_GLOBALS")
        if loads and instruction.argval not in found:
            found.append(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found += [name for name in global_names(const) if name not in found]
    return found


_PICKLERS = {}
_MARKERS = "_tetra_main"


def markers():
    """A module of markers, registered in sys.modules so that pickle can name them: in a
    pickle, `main(path)` stands for a notebook definition, `namespace()` for `__main__`'s
    globals and `kept(ref)` for a value a session keeps for a remote reference; the loader
    (`_unpickler_class`) puts this side's in their place."""
    import sys
    import types

    module = sys.modules.get(_MARKERS)
    if module is None:
        module = types.ModuleType(_MARKERS)

        def main(path):
            raise RuntimeError("a tetra pickle is loaded with MainNames.load")

        def namespace():
            raise RuntimeError("a tetra pickle is loaded with MainNames.load")

        def kept(ref):
            raise RuntimeError("a tetra pickle is loaded with MainNames.load")

        for marker in (main, namespace, kept):
            marker.__module__, marker.__qualname__ = _MARKERS, marker.__name__
            setattr(module, marker.__name__, marker)
        sys.modules[_MARKERS] = module
    return module


def _unpickler_class():
    """pickle's Unpickler, except that a class cloudpickle shipped by value and finds it has
    already (it was pickled in this process: one the notebook made inside a function, say) is
    taken as it is, not overwritten with the shipped copy's attributes: loading never alters
    an existing class."""
    if "unpickler" in _PICKLERS:
        return _PICKLERS["unpickler"]
    import pickle
    import sys

    class Unpickler(pickle.Unpickler):
        def __init__(self, file, names):
            super().__init__(file)
            self.names = names
            module = sys.modules.get("cloudpickle.cloudpickle")
            tracked = getattr(module, "_DYNAMIC_CLASS_TRACKER_BY_CLASS", {})
            self.existing = {id(cls) for cls in list(tracked.keys())}

        def find_class(self, module, name):
            if module == _MARKERS:
                return {
                    "main": self.names.resolve,
                    "namespace": lambda: self.names.namespace,
                    "kept": self.names.kept_value,
                }[name]
            found = super().find_class(module, name)
            if module != "cloudpickle.cloudpickle" or name != "_class_setstate":
                return found
            return lambda cls, state: cls if id(cls) in self.existing else found(cls, state)

    _PICKLERS["unpickler"] = Unpickler
    return Unpickler


def _pickler_class():
    """cloudpickle's Pickler, with notebook definitions referred to by name (`markers`) and
    functions shipped as bytecode given `__main__`'s globals instead of a private copy."""
    if "class" in _PICKLERS:
        return _PICKLERS["class"]
    import sys
    import types

    import cloudpickle

    plain = frozenset(_PLAIN)
    marks = markers()
    # Stands for `__main__`'s globals in a function's reduction: pickle never offers a dict to
    # reducer_override, so the namespace itself could not be replaced by the marker.
    namespace_token = type("Namespace", (), {})()

    class Pickler(cloudpickle.Pickler):
        def __init__(self, file, names, files, to_cpu):
            super().__init__(file)
            self.names, self.files, self.to_cpu = names, files, to_cpu
            self.code_of = None
            self.devices = set()

        def reducer_override(self, obj):  # not for builtin containers: common cases first
            if type(obj) in plain:
                return NotImplemented
            if obj is namespace_token:
                return marks.namespace, ()
            path = self.names.path(obj) if callable(obj) else None  # definitions are callable
            if path is not None:
                return marks.main, (path,)
            if isinstance(obj, types.FunctionType) and obj.__globals__ is self.names.namespace:
                return self._main_function(obj)
            if isinstance(obj, types.CodeType):
                self.code_of = self.code_of or getattr(obj, "co_qualname", obj.co_name)
                if self.files is not None:
                    self.files.add(obj.co_filename)
                constructor, args = self.dispatch_table[types.CodeType](obj)
                named = (obj.co_filename if arg == "<dynamic-code>" else arg for arg in args)
                return constructor, tuple(named)
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(obj, torch.Tensor) and obj.device.type != "cpu":
                self.devices.add(str(obj.device))
                if self.to_cpu:
                    return obj.detach().cpu().__reduce_ex__(self.proto)
            return super().reducer_override(obj)

        def _main_function(self, func):
            """cloudpickle's by-value reduction, but with `__main__` itself as the globals
            (a reference, resolved on loading) instead of a copy of the globals it reads;
            the names it reads travel as names of their own (`MainNames.bytecode`)."""
            self.names.bytecode += global_names(func.__code__)
            make, args, state, items, pairs, setstate = self._dynamic_function_reduce(func)
            state[1]["__globals__"] = {}
            return make, (args[0], namespace_token, *args[2:]), state, items, pairs, setstate

    _PICKLERS["class"] = Pickler
    return Pickler


def _safe(function, *args):
    try:
        return function(*args)
    except Exception:
        return None


def expansion_fields(command):
    """The Python expressions IPython substitutes into a shell command: `{expr}` and `$name`
    (`$$` is a literal `$`; `$name` inside single quotes stays as it is)."""
    import re
    import string

    fields = []
    try:
        parsed = list(string.Formatter().parse(command))
    except ValueError:
        return fields
    for literal, field, _, _ in parsed:
        unquoted = "".join(literal.split("'")[::2])
        fields += re.findall(r"(?<!\$)\$([A-Za-z_][\w.]*)", unquoted)
        if field:
            fields.append(field)
    return fields


def expand(command, namespace):
    """`command` with its fields replaced by their values in `namespace`, as IPython's
    var_expand does it; unchanged if any of them fails to evaluate, as there."""
    import re

    try:
        values = {field: str(eval(field, namespace)) for field in expansion_fields(command)}
    except Exception:
        return command
    parts = re.split(r"(\{\{|\}\}|\{[^{}]*\})", command)
    for index, part in enumerate(parts):
        if part in ("{{", "}}"):
            parts[index] = part[0]
        elif part.startswith("{") and part.endswith("}"):
            parts[index] = values.get(part[1:-1], part)
        else:
            parts[index] = _expand_dollars(part, values)
    return "".join(parts)


def _expand_dollars(text, values):
    import re

    pieces = text.split("'")
    for index in range(0, len(pieces), 2):
        pieces[index] = re.sub(
            r"\$(\$?)([A-Za-z_][\w.]*)",
            lambda m: "$" + m[2] if m[1] else values.get(m[2], m[0]),
            pieces[index],
        )
    return "'".join(pieces)


class _Shell:
    """Enough of `get_ipython()` for the IPython syntax a cell may hold (`!cmd`, `x = !cmd`,
    `%pip`, `%time`, `%matplotlib inline`): it runs on the worker as IPython would run it at
    home."""

    def __new__(cls):
        return cls

    @staticmethod
    def system(cmd):
        import subprocess
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        subprocess.run(expand(cmd, sys._getframe(1).f_globals), shell=True, check=False)

    @staticmethod
    def getoutput(cmd, split=True, depth=0):
        import subprocess
        import sys

        command = expand(cmd, sys._getframe(depth + 1).f_globals)
        done = subprocess.run(command, shell=True, capture_output=True, text=True)
        out = done.stdout + done.stderr
        return out.splitlines() if split else out

    @staticmethod
    def run_line_magic(name, line, _stack_depth=1):
        import sys

        if name == "pip":
            return _Shell.system(f"{sys.executable} -m uv pip {line} --python {sys.executable}")
        if name == "time":
            return _time(line, sys._getframe(_stack_depth).f_globals)
        if name == "matplotlib":
            if line.strip() not in ("", "inline"):
                raise NotImplementedError(
                    f"%matplotlib {line}: figures come back from a %%tetra cell as images"
                    " (inline) only"
                )
            return None
        raise NotImplementedError(f"%{name} is not available in a %%tetra cell")

    @staticmethod
    def run_cell_magic(name, line, cell):
        raise NotImplementedError(f"%%{name} is not available in a %%tetra cell")


def _time(statement, namespace):
    import time

    start = time.perf_counter()
    try:
        value = eval(statement, namespace)
    except SyntaxError:
        exec(statement, namespace)
        value = None
    print(f"Wall time: {time.perf_counter() - start:.3f} s")
    return value


class LiveOutput:
    """The cell's stdout and stderr as RunPod progress updates, on the published worker.

    That worker runs this code in its own process, under the runpod SDK, with stdout captured
    into a buffer that it returns only when the job ends. From inside, the output can go out
    sooner: RunPod shows a job's latest progress update as its `/status` output while it is
    IN_PROGRESS. Each update carries the output since the first chunk that fits in
    PROGRESS_BYTES (a client that missed an update misses nothing), and the final result
    carries all of it, so the client shows every chunk exactly once, in order. Our own worker
    streams output itself; there (and wherever no runpod job is running in this process) this
    stays off.

    That worker also knows nothing of the cell's --timeout (it is not a field of its request),
    so here the cell's thread is interrupted with a TimeoutError once it has run that long: the
    Python code stops there (a call stuck in C code only when it returns to Python).

    Only the cell's own output is recorded. The runpod SDK in that process prints its log lines
    (at its default level, DEBUG: one for every progress update sent) to whatever sys.stdout is
    at the time, and so into the cell's output, which the next update would carry and the SDK
    print again: those lines go to the process's own stdout, the worker's log, instead. And
    the cell logs as it would at home: the worker's handlers on the root logger (which copy
    every record into the response) are taken off while it runs, and the root logger is at
    its default level, so `logging.warning("x")` prints "WARNING:root:x" to the cell's stderr.
    """

    PERIOD_S = 0.5
    PROGRESS_BYTES = 256 * 1024
    KEEP_BYTES = 16 * 1024 * 1024

    def __init__(self, send, timeout=None):
        import threading
        import time

        self.send = send
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.cell_thread = threading.get_ident()
        self.chunks = []
        self.size = 0
        self.dropped = 0
        self.sent = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    @classmethod
    def on_published_worker(cls, timeout=None):
        """A LiveOutput for the one job the runpod SDK in this process is running, if any;
        the cell is stopped after `timeout` seconds."""
        import sys

        state = sys.modules.get("runpod.serverless.modules.worker_state")
        progress = sys.modules.get("runpod.serverless.modules.rp_progress")
        if state is None or progress is None:
            return None
        jobs = list(state.JobsProgress())
        if len(jobs) != 1:
            return None  # none, or several at once: no way to tell which one is this cell's
        job = {"id": str(jobs[0].id)}
        return cls(lambda value: progress.progress_update(job, value), timeout)

    def write(self, kind, text):
        if not text:
            return
        with self.lock:
            size = len(text.encode("utf-8", "replace"))
            if self.size + size > self.KEEP_BYTES:
                self.dropped += size
                return
            self.size += size
            # A chunk already published is final: the client counts chunks, not characters.
            if len(self.chunks) > self.sent and self.chunks[-1]["kind"] == kind:
                self.chunks[-1] = {"kind": kind, "text": self.chunks[-1]["text"] + text}
            else:
                self.chunks.append({"kind": kind, "text": text})

    def __enter__(self):
        import sys
        import threading

        self.saved = sys.stdout, sys.stderr
        sys.stdout = _Tee(sys.stdout, "stdout", self, sys.__stdout__)
        sys.stderr = _Tee(sys.stderr, "stderr", self, sys.__stderr__)
        self.worker_logging = _logging_as_at_home()
        self.thread = threading.Thread(target=self._publish, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import sys

        self.worker_logging()
        sys.stdout, sys.stderr = self.saved
        self.stop.set()
        self.thread.join()
        if self.dropped:
            note = f"tetra: {self.dropped} bytes of output past {self.KEEP_BYTES} were dropped\n"
            self.chunks.append({"kind": "stderr", "text": note})

    def _publish(self):
        import time

        while not self.stop.wait(self.PERIOD_S):
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.deadline = None
                self._interrupt()
            with self.lock:
                count = len(self.chunks)
                if count == self.sent:
                    continue
                first, size = count, 0
                while (
                    first > 0 and size + len(self.chunks[first - 1]["text"]) <= self.PROGRESS_BYTES
                ):
                    first -= 1
                    size += len(self.chunks[first]["text"])
                window = [dict(chunk) for chunk in self.chunks[first:]]
                self.sent = count
            try:
                self.send({"tetra_progress": {"first": first, "chunks": window}})
            except Exception:
                return  # best effort: the output still arrives with the result

    def _interrupt(self):
        """Raise a TimeoutError in the cell's thread, at its next Python instruction."""
        import ctypes

        message = f"the cell ran past its {self.timeout:g} s timeout and was stopped"
        body = {"__init__": _fixed_message(message), "__module__": "builtins"}
        error = type("TimeoutError", (TimeoutError,), body)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(self.cell_thread), ctypes.py_object(error)
        )


def _fixed_message(message):
    """An __init__ giving an exception `message` whatever it is raised with (an exception
    raised in another thread is raised as a class, with no arguments)."""

    def __init__(self, *args):
        TimeoutError.__init__(self, message)

    return __init__


def _logging_as_at_home():
    """Give the root logger the state a notebook kernel's has (no handlers, level WARNING);
    returns what gives the worker back its own."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)

    def restore():
        for handler in root.handlers[:]:  # what the cell added (logging.basicConfig)
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)

    return restore


class _Tee:
    """A text stream that writes through to `stream` and records what passes into `live`;
    what the runpod SDK writes goes to `log` (the process's own stream) instead."""

    def __init__(self, stream, kind, live, log):
        self.stream, self.kind, self.live, self.log = stream, kind, live, log

    def write(self, text):
        if _written_by_the_sdk():
            return (self.log or self.stream).write(text)
        self.live.write(self.kind, text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _written_by_the_sdk():
    """Whether the code calling a stream's write (print's caller) is the runpod SDK's."""
    import sys

    try:
        writer = sys._getframe(2).f_globals.get("__name__") or ""
    except ValueError:  # written from C, with no Python caller
        return False
    return writer.partition(".")[0] == "runpod"
