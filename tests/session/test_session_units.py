"""What a session sends home and what it keeps, decided on the worker (runtime.sessions), and how
the notebook shows what stayed (sessions.RemoteRef): the parts, run directly."""

from __future__ import annotations

import io
import pickle

import pytest

from tetra_magic.runtime import sessions as runtime_sessions
from tetra_magic.runtime.pickling import MainNames
from tetra_magic.session import model as sessions

LIMIT = 1_000_000


def send(value):
    return runtime_sessions.send_home(MainNames({}), value, LIMIT)


class Holder:
    pass


def test_a_small_value_comes_home_as_a_value_that_loads() -> None:
    blob, description = send({"a": [1, 2]})
    assert MainNames({}).load("x", blob) == {"a": [1, 2]}
    assert description["type"] == "dict" and description["size"] < 100


def test_large_values_stay_and_say_how_large() -> None:
    holder = Holder()
    holder.data, holder.rest = bytes(3_000_000), [bytes(500_000)]
    blob, description = send(holder)
    assert blob is None and description["size"] == 3_500_000 and not description["over"]
    blob, description = send(list(range(400_000)))  # nothing inside says its size: a bound
    assert blob is None and description["over"] and description["size"] == LIMIT


def test_open_files_and_unpicklable_values_stay() -> None:
    with open(__file__) as handle:
        blob, description = send(handle)
    assert blob is None and description["type"] == "_io.TextIOWrapper"
    blob, description = send(io.BytesIO(b"x"))
    assert blob is None


def test_a_remote_reference_shows_what_it_is_and_goes_nowhere_else() -> None:
    session = sessions.Session("s", "kernel")
    sessions.SESSIONS["s"] = session
    try:
        big = sessions.RemoteRef(session, "big", {"type": "numpy.ndarray", "size": 50_000_000})
        assert repr(big) == "<remote s.big: ndarray, 50.0 MB>"
        gpu = {"type": "transformers.GPT2LMHeadModel", "size": 548e6, "device": "cuda:0"}
        assert (
            repr(sessions.RemoteRef(session, "m", gpu))
            == "<remote s.m: GPT2LMHeadModel, 548 MB, cuda:0>"
        )
        with sessions.shipping(session):
            MainNames({}).dumps(big)  # a marker, for this session
        with (
            pytest.raises(sessions.SessionError, match="run it with --session s"),
            sessions.shipping(None),
        ):
            MainNames({}).dumps(big)
    finally:
        sessions.SESSIONS.pop("s", None)
    with pytest.raises(sessions.SessionError, match="which has ended"), sessions.shipping(session):
        MainNames({}).dumps(big)


def test_a_session_the_process_does_not_hold_is_reported_lost_not_made_again() -> None:
    info = {"key": "k:s", "id": "one", "new": True}
    made, warm = runtime_sessions.open_session(info)
    try:
        assert not warm and runtime_sessions.open_session({**info, "new": False}) == (made, True)
        lost, answer = runtime_sessions.open_session({**info, "id": "two", "new": False})
        assert lost is None and answer["lost"]
        made.main.__dict__["x"] = 1
        assert runtime_sessions.end("k:s") == {"ended": True, "freed": ["x"]}
        assert runtime_sessions.open_session({**info, "new": False})[0] is None
    finally:
        runtime_sessions.SESSIONS.pop("k:s", None)


def test_sizes_read_as_people_write_them() -> None:
    assert [sessions.size_text(n) for n in (80, 312_000, 50_000_000, 548_000_000, 7e9)] == [
        "80 bytes",
        "312 KB",
        "50.0 MB",
        "548 MB",
        "7.0 GB",
    ]


class Buffered:
    """Data that pickles as a PickleBuffer, as a numpy array's does."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    def __reduce_ex__(self, protocol: int):
        return Buffered, (pickle.PickleBuffer(self.data),)


class Array:
    """Says how many bytes it holds, as arrays and tensors do."""

    def __init__(self, size: int) -> None:
        self.data = bytes(size)

    @property
    def nbytes(self) -> int:
        return len(self.data)


class Slotted:
    """A model that keeps its arrays in __slots__ (py3langid's LanguageIdentifier does)."""

    __slots__ = ("__bias", "weights")

    def __init__(self) -> None:
        self.weights, self.__bias = Array(3_000_000), Array(500_000)


def test_a_value_holding_array_data_under_the_limit_comes_home() -> None:
    blob, description = send({"weights": Buffered(bytes(range(256)) * 800)})
    assert blob is not None, description
    loaded = MainNames({}).load("x", blob)
    assert loaded["weights"].data == bytes(range(256)) * 800


def test_a_value_that_keeps_its_arrays_in_slots_says_how_large_it_is() -> None:
    blob, description = send(Slotted())
    assert blob is None and description["size"] == 3_500_000 and not description["over"]
