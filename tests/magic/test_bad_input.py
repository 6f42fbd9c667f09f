"""No input reaches a traceback from inside the magic: whatever is typed after `%%tetra` or
`%tetra` either parses or ends as a UsageError naming the option and what it accepts.

Every cell here runs through a real shell with the extension loaded; its body is a syntax
error, so a cell whose options were accepted stops at the analysis of its code, before any
endpoint is chosen or reached, and the test never needs the network.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp

from tetra_magic.cloud.client import EndpointError
from tetra_magic.errors import CellSyntaxError
from tetra_magic.local import api, server
from tetra_magic.local.job_store import JobStore

# The body of every cell: `)` cannot parse, so an accepted cell ends at the analysis.
NOT_PYTHON = ")"
FLAGS = (
    "--gpu", "--cpu", "--deps", "--system-deps", "--endpoint", "--local", "--timeout", "--name",
    "--out", "--no-stream", "--quiet", "--verbose", "--send", "--drop", "--env", "--session",
    "--no-session", "--files", "--get", "--", "-", "--gp", "--no", "--gpu=", "--timeout=",
    "--out=", "--endpoint=",
)  # fmt: skip
VALUES = (
    "", "''", '""', "'", '"', "'a b'", '"numpy', "numpy'", "A100", "a100,h100", "any", "cpu",
    "numpy", "torch>=2,<3", "pkg[a,b]", "'numpy>>2'", "-e .", "ffmpeg", "Bad Name", "x", "_x",
    "x,y", "class", "print", "len", "None", "True", "__builtins__", "2x", "é", "名前", "😀",
    "X=1", "X=", "=", "=1", ",", ",,", "a=b=c", "1", "0", "-1", "1e9", "1e400", "nan", "inf",
    "-inf", "0x10", "1_000", "5.", ".5", "abc123", "my-endpoint_1", "http://127.0.0.1:1/v2/x",
    "https://api.runpod.ai/v2/abc", "ftp://x/v2/abc", "http:///v2/abc", "http://h", "http://h/v2/",
    "http://h:port/v2/x", "http://[::1/v2/x", "http://h/v2/x?y=1", "https://h/base/v2/id/",
    "ID with space", "a/b", "off", "s" * 70, "\t", "\u200b", "\x00", "--send", "-x",
)  # fmt: skip
# Characters for made-up words: quotes, separators, letters from several scripts. Nothing that
# IPython would turn into code of its own (`!`, `%`, `?`) or that could end the `%tetra`
# statement's syntax error (`#`, brackets, backslash).
CHARS = "ab'\"=,-.: _1é名😀\u00a0\u200b/<>~@"
# Line-form statements end here; with no bracket opened before, the line cannot parse.
STATEMENT_END = " 1 2 )"
# IPython's escapes at the start of a statement (`,f a` is `f("a")`): the line form's words
# never start with one, so no statement turns into code that runs.
ESCAPES = ",;/!%?"


def random_line(rng: random.Random) -> str:
    """Options as someone might mistype them: real flags, their values, noise."""
    words = []
    for _ in range(rng.randint(0, 7)):
        pick = rng.random()
        if pick < 0.4:
            words.append(rng.choice(FLAGS))
        elif pick < 0.8:
            words.append(rng.choice(VALUES))
        elif pick < 0.9:
            words.append(rng.choice(FLAGS) + "=" + rng.choice(VALUES))
        else:
            words.append("".join(rng.choice(CHARS) for _ in range(rng.randint(0, 8))))
    return rng.choice((" ", "  ", " \t")).join(words)


def statement_safe(line: str) -> str:
    """`line` with no word starting with an IPython escape, whichever word starts the
    statement of `%tetra [options] statement`."""
    return re.sub(rf"(^|\s)[{re.escape(ESCAPES)}]+", r"\1", line)


@pytest.fixture(scope="module")
def shell() -> Iterator[Any]:
    """IPython's test shell; through the module, since the function imported from it answers
    only its first call (then the module holds the shell's own get_ipython)."""
    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "tetra_magic")
    yield ip
    ip.run_line_magic("unload_ext", "tetra_magic")


def outcome(magic: Callable[..., Any], *args: str) -> str:
    """How `magic(*args)` ended: "parsed", "usage", or the unexpected exception, for the
    report."""
    try:
        magic(*args)
    except CellSyntaxError:
        return "parsed"
    except UsageError:
        return "usage"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ran: the cell got past its own syntax error"


@pytest.mark.parametrize("seed", range(4))
def test_random_cell_options_parse_or_are_usage_errors(shell: Any, seed: int) -> None:
    rng = random.Random(seed)
    lines = [random_line(rng) for _ in range(100)]
    results = {line: outcome(shell.run_cell_magic, "tetra", line, NOT_PYTHON) for line in lines}
    broken = {line: r for line, r in results.items() if r not in ("parsed", "usage")}
    assert not broken, "\n".join(f"%%tetra {line!r}: {r}" for line, r in broken.items())
    assert {"parsed", "usage"} <= set(results.values())


@pytest.mark.parametrize("seed", range(2))
def test_random_line_magic_options_parse_or_are_usage_errors(shell: Any, seed: int) -> None:
    rng = random.Random(100 + seed)
    lines = ["--local " + statement_safe(random_line(rng)) + STATEMENT_END for _ in range(100)]
    results = {line: outcome(shell.run_line_magic, "tetra", line) for line in lines}
    broken = {line: r for line, r in results.items() if r not in ("parsed", "usage")}
    assert not broken, "\n".join(f"%tetra {line!r}: {r}" for line, r in broken.items())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('--deps "numpy', r"%%tetra: the options have an unclosed quote: '--deps \"numpy'"),
        ("--name 'job", "unclosed quote"),
    ],
)
def test_an_unclosed_quote_is_named(shell: Any, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        shell.run_cell_magic("tetra", line, NOT_PYTHON)


def test_an_unclosed_quote_on_the_line_form_is_named(shell: Any) -> None:
    with pytest.raises(UsageError, match=r"%tetra: the line has an unclosed quote"):
        shell.run_line_magic("tetra", "--deps 'numpy x = 1")


@pytest.mark.parametrize(("line", "meant"), [("endpoint", "endpoints"), ("sesions", "sessions")])
def test_a_misspelt_command_is_named_not_run_remotely(shell: Any, line: str, meant: str) -> None:
    """A lone undefined name close to a command's would run remotely, a NameError after a
    job; it is the command the user meant."""
    with pytest.raises(UsageError, match=rf"no such command; did you mean %tetra {meant}\b"):
        shell.run_line_magic("tetra", line)


# --------------------------------------------------------------------------- --endpoint


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("ftp://x/v2/abc", "the scheme is 'ftp', not http or https"),
        ("http://host/abc", "its path does not end in /v2/ENDPOINT_ID"),
        ("https://api.runpod.ai/v2/", "its path does not end in /v2/ENDPOINT_ID"),
        ("http:///v2/abc", "it names no valid host"),
        ("http://a b/v2/abc", "it holds spaces or control characters"),
        ("http://host:99999/v2/abc", "Port out of range"),
        ("http://[::1/v2/abc", "Invalid IPv6 URL"),
        ("http://host/v2/abc?key=1", "it has a query or fragment"),
    ],
)
def test_an_endpoint_url_of_the_wrong_shape_says_what_is_expected(
    shell: Any, address: str, problem: str
) -> None:
    expected = "expected http(s)://HOST[:PORT]/v2/ENDPOINT_ID or a RunPod endpoint id"
    with pytest.raises(UsageError) as raised:
        shell.run_cell_magic("tetra", f"--endpoint '{address}'", NOT_PYTHON)
    message = str(raised.value)
    assert message.startswith(f"--endpoint: {address!r} is not an endpoint URL ({problem}")
    assert message.endswith(expected)


@pytest.mark.parametrize("endpoint_id", ["abc/def", "a.b", "''", "é", "x" * 200])
def test_an_endpoint_id_of_the_wrong_shape_is_refused(shell: Any, endpoint_id: str) -> None:
    with pytest.raises(UsageError, match=r"is not an endpoint id \(letters, digits, - and _\)"):
        shell.run_cell_magic("tetra", f"--endpoint {endpoint_id}", NOT_PYTHON)


@pytest.mark.parametrize(
    "address",
    [
        "abc123xyz",
        "local",
        "http://127.0.0.1:8000/v2/local",
        "https://api.runpod.ai/v2/abc123/",
        "https://proxy.example.com/runpod/v2/my-endpoint_1",
        "http://[::1]:9/v2/x",
    ],
)
def test_endpoint_ids_and_urls_of_the_right_shape_are_taken(shell: Any, address: str) -> None:
    with pytest.raises(CellSyntaxError):  # accepted: the cell got as far as its own code
        shell.run_cell_magic("tetra", f"--endpoint {address}", NOT_PYTHON)


def test_the_configured_endpoint_is_checked_when_it_is_set(shell: Any) -> None:
    from traitlets import TraitError

    magic = shell.magics_manager.registry["TetraMagic"]
    with pytest.raises(TraitError, match=r"TetraMagic.endpoint: 'ftp://x/v2/abc' is not"):
        magic.endpoint = "ftp://x/v2/abc"
    assert magic.endpoint == ""


# --------------------------------------------------------------------------- --out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("print", r"--out: 'print' would hide the builtin print\(\); choose another name"),
        ("len", r"--out: 'len' would hide the builtin len\(\)"),
        ("Ellipsis", r"--out: 'Ellipsis' would hide the builtin Ellipsis;"),
        ("class", r"--out: 'class' is not a Python variable name"),
        ("2x", r"--out: '2x' is not a Python variable name"),
    ],
)
def test_out_names_a_new_variable_that_hides_nothing(shell: Any, name: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        shell.run_cell_magic("tetra", f"--out {name}", NOT_PYTHON)


def test_send_and_drop_may_name_builtins_the_notebook_rebound(shell: Any) -> None:
    with pytest.raises(CellSyntaxError):
        shell.run_cell_magic("tetra", "--local --send input --drop len", NOT_PYTHON)


# --------------------------------------------------------------------------- keys


@pytest.fixture(scope="module")
def guarded_endpoint() -> Iterator[str]:
    """The local endpoint's server (no workers: requests it accepts just wait), on loopback in a
    thread of its own; its URL. It wants a token no test here sends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Any:
        runner = server.app_runner(api.Api(JobStore(), None, "the-token", "local"))
        await runner.setup()
        await server.web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v2/local"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No RunPod key anywhere: not in the environment, no ~/.runpod/config.toml."""
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def test_an_endpoint_that_wants_a_key_none_was_sent_ends_the_cell_at_once(
    shell: Any, guarded_endpoint: str, no_key: None
) -> None:
    started = time.monotonic()
    with pytest.raises(EndpointError) as raised:
        shell.run_cell_magic("tetra", f"--endpoint {guarded_endpoint}", "x = 1")
    assert str(raised.value) == (
        "the endpoint refused the request (401): no API key was sent;"
        " set RUNPOD_API_KEY or run `runpod config`"
    )
    assert time.monotonic() - started < 5


def test_a_refused_key_is_named_by_where_it_came_from_never_by_its_value(
    shell: Any, guarded_endpoint: str, no_key: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_not_the_token_42")
    with pytest.raises(EndpointError) as raised:
        shell.run_cell_magic("tetra", f"--endpoint {guarded_endpoint}", "x = 1")
    assert str(raised.value) == (
        "the endpoint rejected the API key (401); key read from the RUNPOD_API_KEY environment"
        " variable"
    )


@pytest.mark.parametrize("cell", ["x = 1\nreturn x", "break", "async def f():\n    yield from g()"])
def test_what_only_the_compiler_refuses_is_a_syntax_error_at_home(shell: Any, cell: str) -> None:
    """The parser accepts these; Python's compiler, as a plain kernel's, refuses them. The
    cell is refused before any job, with the compiler's message and the cell's line."""
    with pytest.raises(SyntaxError) as at_home:
        compile(cell, "<cell>", "exec")
    with pytest.raises(CellSyntaxError) as remote:
        shell.run_cell_magic("tetra", "--local", cell)
    shown = "\n".join(remote.value._render_traceback_())
    assert f"SyntaxError: {at_home.value.msg}" in shown
    assert f"line {at_home.value.lineno + 1}" in shown  # the %%tetra line is the cell's first
