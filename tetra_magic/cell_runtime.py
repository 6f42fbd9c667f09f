"""The code that runs a cell on the worker.

This module's source is sent as the request's `function_code` and `run_cell` is the function the
worker calls, so it must be self-contained: standard library and cloudpickle only, imports inside
the functions, nothing from tetra_magic. That is what lets the published tetra worker run a cell
too.

Values travel as cloudpickle bytes inside the arguments and the result, one blob per name, so a
value that fails to load on one side is named and the others still arrive.
"""


def run_cell(spec, blobs):
    """Run the cell described by `spec` with the notebook values in `blobs`; return the blobs
    of what it bound, the names it deleted, and its last expression's value."""
    import ast
    import builtins
    import linecache

    namespace = {"__name__": "__main__", "__builtins__": builtins, "get_ipython": _Shell}
    namespace.update(_load_inputs(spec, blobs))
    filename, source = spec["filename"], spec["source"]
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    tree = ast.parse(source, filename)
    last = None
    if spec["has_last_expr"]:
        expr = tree.body.pop()
        exec(compile(tree, filename, "exec"), namespace)
        last = eval(compile(ast.Expression(expr.value), filename, "eval"), namespace)
    else:
        exec(compile(tree, filename, "exec"), namespace)
    return _pack_outputs(namespace, spec["binds"], last, spec["has_last_expr"])


def _load_inputs(spec, blobs):
    import importlib
    import platform

    import cloudpickle

    values = {}
    for alias, module in spec["modules"].items():
        values[alias] = importlib.import_module(module)
    for name, blob in blobs.items():
        try:
            values[name] = cloudpickle.loads(blob)
        except Exception as exc:
            hint = ""
            if spec["python"] != platform.python_version_tuple()[:2]:
                hint = (
                    f" (the notebook runs Python {'.'.join(spec['python'])}, this worker"
                    f" {platform.python_version()}: functions travel as bytecode, which does"
                    " not load across Python versions)"
                )
            raise RuntimeError(
                f"notebook variable {name!r} could not be loaded on the worker:"
                f" {type(exc).__name__}: {exc}{hint}"
            ) from exc
    return values


def _pack_outputs(namespace, binds, last, has_last):
    values, errors, deleted = {}, {}, []
    for name in binds:
        if name not in namespace:
            deleted.append(name)
            continue
        try:
            values[name] = _dumps(namespace[name])
        except Exception as exc:
            errors[name] = f"{type(namespace[name]).__name__} cannot be pickled: {exc}"
    out = {"values": values, "errors": errors, "deleted": deleted, "last": None}
    if has_last and last is not None:
        try:
            out["last"] = _dumps(last)
        except Exception as exc:
            errors["Out"] = f"{type(last).__name__} cannot be pickled: {exc}"
        else:
            out["last_repr"] = repr(last)
    return out


def _dumps(value):
    """cloudpickle, with tensors on a GPU stored as their CPU copies."""
    import io
    import sys

    import cloudpickle

    class CpuPickler(cloudpickle.Pickler):
        def reducer_override(self, obj):
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(obj, torch.Tensor) and obj.device.type != "cpu":
                return obj.detach().cpu().__reduce_ex__(self.proto)
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    CpuPickler(buffer).dump(value)
    return buffer.getvalue()


class _Shell:
    """Enough of `get_ipython()` for the IPython syntax a cell may hold (`!cmd`, `x = !cmd`,
    `%pip`, `%time`): it runs on the worker exactly as IPython would run it at home."""

    def __new__(cls):
        return cls

    @staticmethod
    def system(cmd):
        import subprocess
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        subprocess.run(cmd, shell=True, check=False)

    @staticmethod
    def getoutput(cmd, split=True):
        import subprocess

        out = subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout
        return out.splitlines() if split else out

    @staticmethod
    def run_line_magic(name, line, _stack_depth=1):
        import sys

        if name == "pip":
            return _Shell.system(f"{sys.executable} -m uv pip {line} --python {sys.executable}")
        if name == "time":
            return _time(line, sys._getframe(_stack_depth).f_globals)
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
