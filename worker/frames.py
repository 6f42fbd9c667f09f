"""Display outputs framed inside a cell's stdout, and taken out of it again.

A remote cell's display() calls and figures must reach the notebook in order with its prints,
which travel on the child's fd 1; so the cell's display runtime (tetra_magic/runtime/, which
writes the same framing from its own constants in contract.py;
tests/runtime/test_runtime_contract.py checks that they agree) writes each display message into
stdout as START + JSON + END. The JSON is ASCII (binary data is base64) on one line, so the
newline that ends it is unambiguous; and a frame ends in a newline, not a NUL, so the executor,
which holds back a trailing NUL as a possible end marker (worker/child.py), passes it on at once.
The worker splits the frames out into "display" chunks as it reads; the notebook
does the same for the stdout of a worker that does not stream (the published worker, where the
frames arrive inside the response's `stdout`).
"""

from __future__ import annotations

from typing import Any

from worker.protocol import chunk

START = "\x00tetra-display:"
END = "\n"
# A frame that never ends (user code printing START) is given up as text past this size.
MAX_FRAME_CHARS = 256 * 2**20


def encode(message_json: str) -> str:
    """One framed display message."""
    return START + message_json + END


class Splitter:
    """Splits stdout text, fed in arbitrary pieces, into stdout text and display frames."""

    def __init__(self) -> None:
        self.pending = ""
        self.scanned = 0  # how much of a pending frame has been searched for its END

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The chunks `text` completes: "stdout" text and "display" (JSON in its text)."""
        self.pending += text
        out: list[dict[str, Any]] = []
        while self.pending:
            start = self.pending.find(START[0])
            if start < 0:
                out.append(chunk("stdout", self.pending))
                self.pending = ""
                break
            if start:
                out.append(chunk("stdout", self.pending[:start]))
                self.pending, self.scanned = self.pending[start:], 0
            if not self.pending.startswith(START):
                if START.startswith(self.pending):
                    break  # maybe the beginning of a frame: wait for more
                out.append(chunk("stdout", self.pending[0]))  # a NUL of the program's own
                self.pending = self.pending[1:]
                continue
            end = self.pending.find(END, max(len(START), self.scanned))
            if end < 0:
                self.scanned = len(self.pending)
                if len(self.pending) > MAX_FRAME_CHARS:
                    out.append(chunk("stdout", self.pending))
                    self.pending = ""
                break
            out.append(chunk("display", self.pending[len(START) : end]))
            self.pending, self.scanned = self.pending[end + len(END) :], 0
        return [item for item in out if item["text"]]

    def close(self) -> list[dict[str, Any]]:
        """What is left at the end: a frame cut off (its writer killed) is dropped, being
        neither a display nor the program's text."""
        rest, self.pending = self.pending, ""
        return [] if rest.startswith(START) else [chunk("stdout", rest)] if rest else []


def split(text: str) -> list[dict[str, Any]]:
    """A whole stdout as chunks, in order."""
    splitter = Splitter()
    return splitter.feed(text) + splitter.close()
