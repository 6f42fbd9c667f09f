"""The magic's parts without a kernel or a server: a cell packed here and run by `run_cell` in
this process (as the worker runs it) behaves as it would locally; both response shapes are
understood; Ctrl-C, timeouts and lost connections end in one clear message; remote tracebacks
read like local ones."""

from __future__ import annotations

import asyncio
import json
import linecache
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from helpers.following import followed
from IPython.core.error import UsageError
from IPython.core.inputtransformer2 import TransformerManager

from tetra_magic.cell import outcome
from tetra_magic.cell.analysis import analyse
from tetra_magic.cell.packing import pack
from tetra_magic.cloud.client import Endpoint, EndpointClient, EndpointError
from tetra_magic.errors import (
    CellInterrupted,
    JobFailed,
    cell_labeler,
    remote_error,
    render_traceback,
)
from tetra_magic.job.follow import JobTimeout
from tetra_magic.magic import TetraMagic, parse_options, split_line
from tetra_magic.options import CellOptions
from tetra_magic.runtime import shell
from tetra_magic.runtime.cell import run_cell
from tetra_magic.runtime.pickling import MainNames
from tetra_magic.view.text import TextView
from worker import frames, handler
from worker.executor import Executor
from worker.protocol import FunctionResponse, decode, encode

FILE = "<tetra-cell-7>"
LABEL = cell_labeler(None)


def options(**changes: Any) -> CellOptions:
    base = CellOptions(
        gpus=(),
        gpu_ids=(),
        cpu=False,
        dependencies=(),
        system_dependencies=(),
        endpoint=None,
        local=True,
        timeout=60.0,
        name=None,
        out=None,
        stream=True,
        quiet=False,
        verbose=False,
    )
    return types.SimpleNamespace(**{**base.__dict__, **changes})  # type: ignore[return-value]


def packed(cell: str, user_ns: dict[str, Any], **opts: Any):
    analysis = analyse("\n" + TransformerManager().transform_cell(cell), FILE)
    request = pack(
        analysis, user_ns, options(**opts), filename=FILE, limit=10_000_000, label=kernel_label
    )
    return analysis, request


def kernel_label(filename: str) -> str | None:
    """Cells as the kernel names them: `notebook()`'s files are In[2]."""
    return "Cell In[2]" if filename.startswith("/tmp/ipykernel_1/") else LABEL(filename)


@pytest.fixture(autouse=True)
def ipython_as_it_was() -> Iterator[None]:
    """run_cell, run in this process, makes IPython's shell publish display frames, as on a
    worker with IPython; the tests after it get this process's shell back as it was."""
    from IPython.core.interactiveshell import InteractiveShell

    before = InteractiveShell._instance
    publisher = before.display_pub if before is not None else None
    yield
    if before is not None:
        before.display_pub = publisher
    elif InteractiveShell._instance is not None:
        type(InteractiveShell._instance).clear_instance()


def run_here(cell: str, user_ns: dict[str, Any], **opts: Any) -> outcome.CellResult:
    """Pack `cell`, run it as the worker would (in this process), and write the results back
    into `user_ns` as the magic does; the cell's last value is the result's `last`."""
    _, request = packed(cell, user_ns, **opts)
    kwargs = {k: decode(v) for k, v in request.request.kwargs.items()}
    value = run_cell(**kwargs)
    response = FunctionResponse(success=True, result=encode(value))
    result = outcome.unpack(response)
    outcome.apply(result, user_ns)
    return result


def notebook(source: str, filename: str = "/tmp/ipykernel_1/cell2.py") -> dict[str, Any]:
    """A namespace as an earlier cell leaves it: its code compiled under a kernel cell file,
    registered with linecache as IPython does."""
    user_ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), user_ns)
    return user_ns


# --------------------------------------------------------------------------- semantics


def test_a_function_from_an_earlier_cell_sees_what_the_cell_assigns() -> None:
    """Locally, a helper reads the notebook's globals at call time; remotely too, even for a
    global the helper uses that the notebook never had."""
    user_ns = notebook(
        "def total():\n    return helper() + offset\n\ndef helper():\n    return data * 2\n"
    )
    result = run_here("data = 5\noffset = 1\ntotal()", user_ns)
    assert result.last == 11
    assert user_ns["data"] == 5


def test_functions_and_classes_come_home_living_in_the_notebook() -> None:
    user_ns = notebook(
        "class Meter:\n    def read(self):\n        return unit\n"
        "    @staticmethod\n    def scale():\n        return unit * 2\n"
    )
    script: dict[str, Any] = {"__name__": "__main__"}  # as `%run script.py` leaves its functions
    exec("def from_script():\n    return 1\n", script)
    user_ns["from_script"] = script["from_script"]
    run_here("unit = 3\nm = Meter()\ndef twice():\n    return unit * 2", user_ns)
    assert user_ns["from_script"].__globals__ is script
    user_ns["unit"] = 10
    assert user_ns["twice"]() == 20
    assert user_ns["m"].read() == 10 and user_ns["Meter"].scale() == 20
    assert user_ns["twice"].__globals__ is user_ns


def test_builtins_the_notebook_shadowed_are_sent_and_ipythons_display_is_not() -> None:
    from IPython.display import display

    user_ns = {"max": lambda *args: "shadowed", "display": display}
    _, request = packed("display(max(1, 2), min(1, 2))", user_ns)
    assert decode(request.request.kwargs["blobs"]).keys() == {"max"}


def test_only_deleted_names_leave_the_notebook() -> None:
    user_ns = {"keep": 1, "gone": 2, "err": 3}
    run_here(
        "if False:\n    keep = 5\ndel gone\ntry:\n    1 / 0\nexcept ZeroDivisionError as err:\n"
        "    pass\nnew = 4",
        user_ns,
    )
    assert user_ns == {"keep": 1, "new": 4}


def test_modules_travel_by_name_submodules_and_aliases_too() -> None:
    import xml.dom.minidom  # noqa: F401  (the notebook imported it)
    from os import path

    user_ns = {"xml": sys.modules["xml"], "p": path, "js": sys.modules["json"]}
    _, request = packed(
        "tag = xml.dom.minidom.parseString('<a/>').documentElement.tagName", user_ns
    )
    spec = decode(request.request.kwargs["spec"])
    assert spec["modules"] == {"xml": ["xml", "xml.dom", "xml.dom.minidom"]}
    result = run_here(
        "import email.utils as eu\ntag = xml.dom.minidom.parseString('<a/>').documentElement."
        "tagName\nj = js.dumps([p.join('a', 'b')])",
        user_ns,
    )
    assert result.problems == {}
    assert (user_ns["tag"], user_ns["j"], user_ns["eu"].__name__) == ("a", '["a/b"]', "email.utils")


def test_a_module_only_on_the_worker_is_left_out_silently_and_the_rest_lands() -> None:
    worker_only = types.ModuleType("worker_only_mod")
    exec("class Thing:\n    pass\n", worker_only.__dict__)
    sys.modules["worker_only_mod"] = worker_only
    _, request = packed("import worker_only_mod\nt = worker_only_mod.Thing()\nn = 1", {})
    value = run_cell(**{k: decode(v) for k, v in request.request.kwargs.items()})
    del sys.modules["worker_only_mod"]
    result = outcome.unpack(FunctionResponse(success=True, result=encode(value)))
    outcome.apply(result, {})
    assert result.values["n"] == 1
    assert repr(result.values["t"]).startswith("<tetra: worker_only_mod.Thing, not loadable")
    assert list(result.problems) == ["t"]
    assert result.problems["t"].startswith("cannot be loaded here: ModuleNotFoundError")


def test_a_last_value_that_cannot_come_home_shows_the_workers_rendering_without_a_note() -> None:
    class Frame:
        def __reduce__(self):
            return (__import__, ("no_such_module_here",))

        def _repr_html_(self) -> str:
            return "<table>t</table>"

        def __repr__(self) -> str:
            return "Frame(3 rows)"

    portable = MainNames({}).portable(Frame())
    result = outcome.unpack(FunctionResponse(success=True, result=encode({"last": portable})))
    outcome.apply(result, {})
    assert repr(result.last) == "Frame(3 rows)"
    assert result.last._repr_mimebundle_() == {
        "text/html": "<table>t</table>",
        "text/plain": "Frame(3 rows)",
    }
    assert result.problems == {}


def test_display_send_drop_and_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TETRA_TEST_ENV", "off")  # restored after the cell sets it
    user_ns = {"hidden": 41}
    result = run_here(
        "import os\nx = globals()['hidden'] + 1\nbig = [0] * 10\ndisplay('shown', x)\n"
        "os.environ['TETRA_TEST_ENV']",
        user_ns,
        send=("hidden",),
        drop=("big",),
        env=(("TETRA_TEST_ENV", "on"),),
    )
    assert user_ns["x"] == 42 and "big" not in user_ns
    displays = frames.split(capsys.readouterr().out)  # framed among the cell's prints
    shown = [json.loads(c["text"])["data"]["text/plain"] for c in displays]
    assert shown == ["'shown'", "42"]
    assert result.last == "on"


def test_top_level_await_runs_as_under_ipythons_autoawait() -> None:
    user_ns: dict[str, Any] = {}
    result = run_here(
        "import asyncio\nx = await asyncio.sleep(0, 'slept')\nawait asyncio.sleep(0, x)", user_ns
    )
    assert user_ns["x"] == "slept" and result.last == "slept"


def test_shell_syntax_expands_notebook_values_as_ipython_does() -> None:
    user_ns = {"word": "tetra"}
    result = run_here("lines = !echo {word.upper()} $word '$word'\nlines", user_ns)
    assert result.last == ["TETRA tetra $word"]
    assert shell.expand("a $$b {{c}} {missing}", {}) == "a $$b {{c}} {missing}"
    assert shell.expand("a $$b {{c}} {n + 1}", {"n": 1}) == "a $b {c} 2"


def test_unpicklable_global_is_named_with_its_type_and_nothing_is_packed() -> None:
    with pytest.raises(UsageError, match=r"variable 'lock' \(_thread\.lock\) cannot be sent"):
        packed("with lock:\n    pass", {"lock": threading.Lock()})


def test_payload_over_the_limit_names_sizes() -> None:
    analysis = analyse("\nlen(blob)", FILE)
    user_ns = {"blob": b"x" * 2_000_000}
    with pytest.raises(UsageError) as info:
        pack(analysis, user_ns, options(), filename=FILE, limit=1_000_000)
    # the request: the blob, and the runtime the worker runs it with
    assert re.match(r"the request is 2\.\d MB, over the endpoint's 1\.0 MB limit", str(info.value))
    assert "largest variables: blob 2.0 MB" in str(info.value)


def test_earlier_cells_travel_with_the_functions_defined_in_them() -> None:
    user_ns = notebook("def inv(v):\n    return 1 / v\n", "/tmp/ipykernel_1/cell3.py")
    analysis = analyse("\ninv(0)", FILE)
    request = pack(analysis, user_ns, options(), filename=FILE, limit=10**7, label=kernel_label)
    spec = decode(request.request.kwargs["spec"])
    assert spec["sources"] == {"/tmp/ipykernel_1/cell3.py": "def inv(v):\n    return 1 / v\n"}
    assert spec["definitions"] == {
        "inv": ["def inv(v):\n    return 1 / v\n", "/tmp/ipykernel_1/cell3.py", 1]
    }


# --------------------------------------------------------------------------- tracebacks

REMOTE = """Traceback (most recent call last):
  File "<tetra-runtime <tetra-cell-7>>", line 30, in run_cell
    exec(compile(tree, filename, "exec"), namespace)
  File "<tetra-cell-7>", line 3, in <module>
    get_ipython().system('ls')
  File "/tmp/ipykernel_1/cell3.py", line 2, in inv
  File "/usr/lib/python3.11/fractions.py", line 9, in f
    x = 1 / 0
        ~~^~~
ZeroDivisionError: division by zero
"""


def test_remote_tracebacks_name_cells_as_ipython_does() -> None:
    linecache.cache[FILE] = (0, None, ["%%tetra --local\n", "x = 1\n", "!ls\n"], FILE)
    linecache.cache["/tmp/ipykernel_1/cell3.py"] = (
        0,
        None,
        ["def inv(v):\n", "  return 1/v\n"],
        "",
    )
    labels = {"/tmp/ipykernel_1/cell3.py": "Cell In[3]"}

    def label(name: str) -> str | None:
        return LABEL(name) or labels.get(name)

    assert render_traceback(REMOTE, label) == [
        "Traceback (most recent call last):",
        "  Cell In[7], line 3",
        "    !ls",
        "  Cell In[3], line 2, in inv",
        "    return 1/v",
        '  File "/usr/lib/python3.11/fractions.py", line 9, in f',
        "    x = 1 / 0",
        "        ~~^~~",
        "ZeroDivisionError: division by zero",
    ]


def test_remote_errors_are_their_builtin_type_too() -> None:
    error = remote_error("KeyError", "Traceback...\nKeyError: 'k'\n", LABEL)
    assert isinstance(error, KeyError) and type(error).__name__ == "KeyError"
    assert str(error) == "'k'"
    assert type(remote_error("OSError", "OSError: x", LABEL)).__name__ == "OSError"
    assert not isinstance(remote_error("MyError", "MyError: m", LABEL), KeyError)


# --------------------------------------------------------------------------- following


class FakeClient:
    """Serves /stream pages and a final /status document, as an endpoint would."""

    def __init__(self, pages: list[dict[str, Any]], final: dict[str, Any]) -> None:
        self.pages, self.final = pages, final
        self.cancelled: list[str] = []
        self.on_stream: Callable[[int], None] = lambda n: None
        self.streams = 0

    def stream(self, job_id: str) -> dict[str, Any]:
        self.streams += 1
        self.on_stream(self.streams)
        return self.pages.pop(0) if self.pages else {"status": "IN_PROGRESS", "stream": []}

    def status(self, job_id: str) -> dict[str, Any]:
        return self.final

    def cancel(self, job_id: str) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return {"status": "CANCELLED"}


def _request(cell: str, user_ns: dict[str, Any]) -> dict[str, Any]:
    return {"input": packed(cell, user_ns)[1].request.model_dump(exclude_none=True)}


CELL = "y = x * 2\nprint('hello from the worker')\ny + 1"


@pytest.fixture(scope="module")
def worker_outputs() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """CELL run by our worker's handlers in this process: the published worker's plain
    FunctionResponse dict, and our streamed list of chunks (one event loop: the worker keeps
    its executor child on it)."""

    async def both() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        job = _request(CELL, {"x": 20})
        plain = await handler.plain_handler(job)
        return plain, [item async for item in handler.stream_handler(job)]

    async def closed() -> None:
        executor.close()
        await asyncio.sleep(0.05)  # let the killed child's pipes close

    with pytest.MonkeyPatch.context() as patch:
        executor = Executor()
        patch.setattr(handler, "EXECUTOR", executor)
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(both())
        finally:
            loop.run_until_complete(closed())
            loop.close()


CELL = "y = x * 2\nprint('hello from the worker')\ny + 1"


def _finish(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> tuple[Any, dict, str]:
    view = TextView()
    job = followed(client, "job-1", view)
    view.close(job.response)
    user_ns: dict[str, Any] = {}
    result = outcome.unpack(job.check(LABEL, user_ns))
    outcome.apply(result, user_ns)
    return result.last, user_ns, capsys.readouterr().out


def test_the_published_workers_plain_response_is_understood(
    capsys: pytest.CaptureFixture[str], worker_outputs: tuple[dict, list]
) -> None:
    """The published worker does not stream: /stream has nothing, /status holds one
    FunctionResponse dict (here made by our worker's non-streaming handler, its shape)."""
    output = worker_outputs[0]
    client = FakeClient(
        [{"status": "COMPLETED", "stream": []}], {"status": "COMPLETED", "output": output}
    )
    assert _finish(client, capsys) == (41, {"y": 40}, "hello from the worker\n")


def test_the_streamed_list_is_understood(
    capsys: pytest.CaptureFixture[str], worker_outputs: tuple[dict, list]
) -> None:
    items = worker_outputs[1]
    assert items[-1]["kind"] == "response"
    pages = [{"status": "IN_PROGRESS", "stream": [{"output": item}]} for item in items[:-1]]
    client = FakeClient(
        [*pages, {"status": "COMPLETED", "stream": []}], {"status": "COMPLETED", "output": items}
    )
    assert _finish(client, capsys) == (41, {"y": 40}, "hello from the worker\n")


def test_a_failed_job_reads_as_a_sentence_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    error = '{"error_type": "<class \'MemoryError\'>", "error_message": "worker ran out"}'
    client = FakeClient([{"status": "FAILED", "stream": []}], {"status": "FAILED", "error": error})
    with pytest.raises(JobFailed) as info:
        _finish(client, capsys)
    assert str(info.value) == "job job-1 failed: <class 'MemoryError'>: worker ran out"


@pytest.mark.parametrize("streams", [True, False])
def test_ctrl_c_cancels_the_remote_job_and_says_so(streams: bool) -> None:
    """A worker that streams stops the code; of one that does not, the message says it may
    run on (RunPod's published worker cannot stop a running cell)."""
    info_chunk = {"output": {"kind": "info", "worker_id": "w", "python": "3.11.7"}}
    client = FakeClient([{"status": "IN_PROGRESS", "stream": [info_chunk] if streams else []}], {})

    def interrupt(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    client.on_stream = interrupt
    with pytest.raises(CellInterrupted) as info:
        followed(client, "job-9", TextView())
    assert isinstance(info.value, KeyboardInterrupt)
    caveat = (
        " (a worker that does not stream, such as RunPod's published one, may run the code on"
        " until it ends, and start the next job only then)"
    )
    expected = "job job-9 was cancelled on the endpoint" + ("" if streams else caveat)
    assert str(info.value) == expected
    assert client.cancelled == ["job-9"]


def test_a_deadline_cancels_the_job() -> None:
    client = FakeClient([{"status": "IN_PROGRESS", "stream": []}], {})
    with pytest.raises(JobTimeout) as info:
        followed(client, "job-3", TextView(), deadline=0.0)
    assert client.cancelled == ["job-3"]
    assert str(info.value).endswith("; job job-3 was cancelled on the endpoint")


def test_time_spent_installing_does_not_count_against_the_deadline() -> None:
    def page(*items: dict[str, Any], status: str = "IN_PROGRESS") -> dict[str, Any]:
        return {"status": status, "stream": [{"output": item} for item in items]}

    installing, running = (
        {"kind": "phase", "text": "installing"},
        {"kind": "phase", "text": "running"},
    )
    client = FakeClient(
        [page(installing), page(), page(), page(), page(running), page(status="COMPLETED")],
        {"status": "COMPLETED", "output": []},
    )
    client.on_stream = lambda n: time.sleep(0.1) if n < 5 else None
    job = followed(client, "job-4", TextView(), deadline=time.monotonic() + 0.2)
    assert job.status == "COMPLETED" and client.cancelled == []


def test_a_lost_connection_is_retried_then_named_with_the_job() -> None:
    attempts = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    endpoint = Endpoint("http://127.0.0.1:9/v2", "ep", "key")
    client = EndpointClient(
        endpoint, retries=2, max_backoff=0.01, transport=httpx.MockTransport(refuse)
    )
    with pytest.raises(EndpointError) as info:
        client.stream("job-5")
    assert attempts == ["/v2/ep/stream/job-5"] * 3
    assert str(info.value) == (
        "lost the connection to http://127.0.0.1:9/v2/ep (ConnectError: connection refused);"
        " job job-5 may still be running there"
    )
    assert info.value._render_traceback_() == [f"EndpointError: {info.value}"]


def test_an_endpoint_never_reached_is_named_within_seconds() -> None:
    """Before any job exists, a connection that cannot be made (refused, no such host) ends
    the cell after a short retry, saying so, not after the 15 s a lost one is given."""
    attempts = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    endpoint = Endpoint("http://127.0.0.1:9/v2", "ep", "key")
    client = EndpointClient(endpoint, transport=httpx.MockTransport(refuse))
    start = time.monotonic()
    with pytest.raises(EndpointError) as info:
        client.run({"function_code": "pass"})
    assert time.monotonic() - start < 3 and len(attempts) == 3
    assert str(info.value) == (
        "could not connect to http://127.0.0.1:9/v2/ep ([Errno 111] Connection refused):"
        " check its address, and that it is up"
    )


# --------------------------------------------------------------------------- %tetra line


@pytest.mark.parametrize(
    ("line", "options", "statement"),
    [
        ("x = f(y)", "", "x = f(y)"),
        ("--local x = 1", "--local", "x = 1"),
        (
            "--gpu A100,H100 --deps 'torch>=2' torch.zeros(1)",
            "--gpu A100,H100 --deps 'torch>=2'",
            "torch.zeros(1)",
        ),
        ("--timeout=5 --local -- --x", "--timeout=5 --local", "--x"),
        ("--gpu A100  print('a   b')", "--gpu A100", "print('a   b')"),
        ("--quiet", "--quiet", ""),
    ],
)
def test_line_magic_splits_options_from_the_statement(
    line: str, options: str, statement: str
) -> None:
    """The statement as written; the options as %%tetra's own parser reads them."""
    args, rest = split_line(line, TetraMagic.tetra_line.parser)
    assert rest == statement
    assert args == parse_options(options)


def test_line_magic_names_an_unknown_option() -> None:
    with pytest.raises(UsageError, match=r"unknown option --frob; options: --gpu, --cpu"):
        split_line("--frob x", TetraMagic.tetra_line.parser)


def test_loading_never_alters_an_existing_class() -> None:
    """A class the notebook made inside a function has no name to travel by, so it goes by
    value; the copy that comes back must not overwrite the notebook's class (cloudpickle
    would, having seen it before in this process)."""

    def make() -> type:
        class Local:
            def get(self) -> int:
                return 1

        return Local

    cls = make()
    before = dict(vars(cls))
    names = MainNames({})
    copy = names.load("obj", names.dumps(cls()))
    assert type(copy) is cls and copy.get() == 1
    after = {k: v for k, v in vars(cls).items() if k != "__slotnames__"}  # pickle's own cache
    assert after.keys() == before.keys() and all(after[k] is v for k, v in before.items())


def test_a_lambda_travels_with_the_cells_globals_not_a_copy_of_them() -> None:
    """A lambda has no statement of its own to travel as, so it goes as bytecode; on the worker
    it reads the cell's globals as it would read the notebook's at home (what the cell assigns
    included), and nothing else of the notebook travels with it (the lock would not pickle)."""
    user_ns = notebook(
        "import threading\nlock = threading.Lock()\nscale = 3\ntimes = lambda v: v * scale\n"
    )
    result = run_here("scale = 5\ny = times(2)\ntimes(1)", user_ns)
    assert (user_ns["y"], result.last, user_ns["times"](1)) == (10, 5, 5)


def test_an_oversized_map_request_advises_a_smaller_batch_only_where_its_items_weigh() -> None:
    analysis = analyse("\nlen(blob) + len(n)", FILE)
    opts = options(map_name="n")
    with pytest.raises(UsageError) as shared:  # a large input, small items
        pack(analysis, {"blob": b"x" * 2_000_000}, opts, filename=FILE, limit=1_000_000,
             items={0: b"a", 1: b"b"})  # fmt: skip
    assert "its 2 --map items: 0.0 MB" in str(shared.value)
    assert "--batch" not in str(shared.value)
    with pytest.raises(UsageError) as heavy:  # the items are the weight
        pack(analysis, {"blob": b""}, opts, filename=FILE, limit=1_000_000,
             items={0: b"x" * 600_000, 1: b"y" * 600_000})  # fmt: skip
    assert "A smaller --batch sends fewer items per job." in str(heavy.value)
