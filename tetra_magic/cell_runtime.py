"""The code that runs a cell on the worker.

This module's source is sent as the request's `function_code` and `run_cell` is the function the
worker calls, so it must be self-contained: standard library and cloudpickle only, imports inside
the functions, nothing from tetra_magic. That is what lets the published tetra worker run a cell
too. (The kernel imports a few of its helpers as well, so both sides share one definition.)

Values travel as cloudpickle bytes inside the arguments and the result, one blob per name, so a
value that fails to load on one side is named and the others still arrive.
"""


def run_cell(spec, blobs):
    """Run the cell described by `spec` with the notebook values in `blobs`; return the blobs
    of what it bound, the names it deleted and its last expression's value. What it displays
    goes out with its prints, through the display runtime. On the published worker, also the
    cell's output, which it sent live as progress updates.

    Its --env variables, and the stand-ins for stdin, last for this cell only, however it ends:
    the same process runs later cells (other kernels' too, on the published worker)."""
    restore = _for_this_cell(spec.get("env") or {})
    try:
        live = LiveOutput.on_published_worker(spec.get("timeout"))
        if live is None:
            return _run_cell(spec, blobs)
        with live:
            out = _run_cell(spec, blobs)
        out["output"] = live.chunks
        return out
    finally:
        restore()


def _run_cell(spec, blobs):
    import ast
    import builtins

    _register_sources(spec.get("sources") or {})
    display = _display_runtime(spec["display"])
    namespace = {"__name__": "__main__", "__builtins__": builtins, "get_ipython": _Shell}
    namespace["display"] = display.display_function()
    namespace.update(_load_inputs(spec, blobs))
    adopt_all(namespace, list(namespace), merge=True)
    filename, source = spec["filename"], spec["source"]
    _register_sources({filename: source})
    tree = ast.parse(source, filename)
    last = None
    try:
        if spec["has_last_expr"]:
            expr = tree.body.pop()
            _execute(tree, filename, namespace)
            last = _execute(ast.Expression(expr.value), filename, namespace)
        else:
            _execute(tree, filename, namespace)
    finally:
        display.end()
    return _pack_outputs(namespace, spec, last)


def _display_runtime(source):
    """The cell's display machinery (tetra_magic/remote_display.py, whose source the request
    carries), made the module `tetra_display` once per process and readied for this cell.
    Its classes pickle by value, so a stand-in HTML(...) can come home as a value."""
    import sys
    import types

    import cloudpickle

    module = sys.modules.get("tetra_display")
    if module is None or source != module.SOURCE:
        module = types.ModuleType("tetra_display")
        module.SOURCE = source
        _register_sources({"<tetra_display>": source})
        exec(compile(source, "<tetra_display>", "exec"), module.__dict__)
        sys.modules["tetra_display"] = module
        cloudpickle.register_pickle_by_value(module)
    module.begin()
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


def _load_inputs(spec, blobs):
    values = {}
    for alias, names in spec["modules"].items():
        values[alias] = _import(alias, names)
    for name, blob in blobs.items():
        values[name] = _load_input(spec, name, blob)
    return values


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


def _load_input(spec, name, blob):
    import platform

    import cloudpickle

    try:
        return cloudpickle.loads(blob)
    except Exception as exc:
        hint = ""
        if tuple(spec["python"]) != platform.python_version_tuple()[:2]:
            hint = (
                f" (the notebook runs Python {'.'.join(spec['python'])}, this worker"
                f" {platform.python_version()}: functions travel as bytecode, which does"
                " not load across Python versions)"
            )
        raise RuntimeError(
            f"notebook variable {name!r} could not be loaded on the worker:"
            f" {type(exc).__name__}: {exc}{hint}"
        ) from None


def adopt_all(namespace, names, merge):
    """Make the notebook functions and classes named `names` live in `namespace`, as they do
    at home.

    cloudpickle gives a function shipped by value a private copy of the globals it uses, so
    a helper from an earlier cell would not see what this cell assigns, and a class that made
    the round trip would come home with methods reading stale copies. Here each gets
    `namespace` as its globals; with `merge`, the globals it carried fill in names the
    namespace lacks (the helper's own helpers, which the cell itself does not name).
    """
    todo = list(names)
    while todo:
        name = todo.pop()
        value = namespace[name]
        for carried in _foreign_globals(value, namespace):
            for key, item in carried.items():
                if merge and key not in namespace and not key.startswith("__"):
                    namespace[key] = item
                    todo.append(key)
        adopted = adopt(value, namespace)
        if adopted is not value:
            namespace[name] = adopted
        if is_notebook_class(type(value)):
            adopt(type(value), namespace)


def _is_notebook_function(value, namespace):
    import types

    return (
        isinstance(value, types.FunctionType)
        and value.__module__ == "__main__"
        and value.__globals__ is not namespace
    )


def is_notebook_class(value):
    return isinstance(value, type) and value.__module__ == "__main__"


def _methods(cls):
    """(attribute, function, rewrap) for each function a notebook class holds."""
    for attr, item in list(vars(cls).items()):
        if isinstance(item, (staticmethod, classmethod)):
            yield attr, item.__func__, type(item)
        else:
            yield attr, item, None


def _foreign_globals(value, namespace):
    """The carried globals of `value` (a function, or a class's methods) that are not
    `namespace`."""
    if _is_notebook_function(value, namespace):
        return [value.__globals__]
    classes = [c for c in (value, type(value)) if is_notebook_class(c)]
    return [
        item.__globals__
        for cls in classes
        for _, item, _ in _methods(cls)
        if _is_notebook_function(item, namespace)
    ]


def adopt(value, namespace):
    """`value` with `namespace` as the globals of its notebook functions: a new function, or
    the same class with its methods rebound; anything else as it is."""
    import types

    if _is_notebook_function(value, namespace):
        new = types.FunctionType(
            value.__code__, namespace, value.__name__, value.__defaults__, value.__closure__
        )
        new.__kwdefaults__ = value.__kwdefaults__
        new.__dict__.update(value.__dict__)
        for attr in ("__qualname__", "__doc__", "__module__", "__annotations__"):
            setattr(new, attr, getattr(value, attr))
        return new
    if is_notebook_class(value):
        for attr, item, rewrap in _methods(value):
            if _is_notebook_function(item, namespace):
                new = adopt(item, namespace)
                setattr(value, attr, rewrap(new) if rewrap else new)
    return value


def _pack_outputs(namespace, spec, last):
    import types

    values, modules, errors, deleted = {}, {}, {}, []
    for name in spec["binds"]:
        if name not in namespace:
            if name in spec["deletes"]:
                deleted.append(name)
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            modules[name] = [value.__name__, *_submodules(name, spec["source"])]
            continue
        try:
            values[name] = _dumps(value)
        except Exception as exc:
            errors[name] = f"{type(value).__name__} cannot be pickled: {exc}"
    errors = _worth_a_note(errors, namespace, spec["source"])
    out = {"values": values, "modules": modules, "errors": errors, "deleted": deleted}
    out["imported"] = _imported_names(spec["source"])
    out["last"] = _portable(last) if spec["has_last_expr"] and last is not None else None
    return out


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


def _portable(value):
    """A value as it can best travel: its pickle (None if it has none), its repr, and its rich
    representations, so the notebook can show it even where it cannot load it. A figure
    travels as its image only: the notebook shows it, and needs no matplotlib for that."""
    import sys

    display = sys.modules["tetra_display"]
    reason = None
    if display.is_figure(value):
        blob = None
    else:
        try:
            blob = _dumps(value)
        except Exception as exc:
            blob, reason = None, f"{type(value).__name__} cannot be pickled: {exc}"
    mime = (_safe(display.format, value) or ({}, {}))[0]
    return {"blob": blob, "reason": reason, "repr": _safe(repr, value), "mime": mime}


def _safe(function, *args):
    try:
        return function(*args)
    except Exception:
        return None


def _dumps(value):
    return dumps(value, to_cpu=True)


def dumps(value, files=None, to_cpu=False):
    """cloudpickle, keeping the file names of code shipped by value (noted in `files`), so
    tracebacks and linecache can find the cells it came from; with `to_cpu`, tensors on an
    accelerator are stored as their CPU copies, for a notebook that has none."""
    import io
    import sys
    import types

    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, types.CodeType):
                if files is not None:
                    files.add(obj.co_filename)
                constructor, args = self.dispatch_table[types.CodeType](obj)
                named = (obj.co_filename if arg == "<dynamic-code>" else arg for arg in args)
                return constructor, tuple(named)
            torch = sys.modules.get("torch") if to_cpu else None
            if torch is not None and isinstance(obj, torch.Tensor) and obj.device.type != "cpu":
                return obj.detach().cpu().__reduce_ex__(self.proto)
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    Pickler(buffer).dump(value)
    return buffer.getvalue()


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
        sys.stdout = _Tee(sys.stdout, "stdout", self)
        sys.stderr = _Tee(sys.stderr, "stderr", self)
        self.thread = threading.Thread(target=self._publish, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import sys

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


class _Tee:
    """A text stream that writes through to `stream` and records what passes into `live`."""

    def __init__(self, stream, kind, live):
        self.stream, self.kind, self.live = stream, kind, live

    def write(self, text):
        self.live.write(self.kind, text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)
