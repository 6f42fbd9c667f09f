"""The local endpoint's state files as damage finds them: a token file that is empty, blank,
not text or not a token is replaced by a fresh one, 0600, which every later reader agrees on;
and what passes from a kernel's environment into the endpoint's processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tetra_magic.local import kernels, passed_env, state
from worker import executor


@pytest.mark.parametrize("content", [b"", b" \n\t", b"\xff\xfe\x00", b"short", b"has space in it"])
def test_a_damaged_token_file_is_replaced(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / state.TOKEN_FILE
    path.write_bytes(content)
    token = state.token(tmp_path)
    assert len(token) >= 32 and token.encode() != content.strip()
    assert path.read_text().strip() == token and path.stat().st_mode & 0o777 == 0o600
    assert state.token(tmp_path) == token  # kept from now on


def test_a_good_token_file_is_kept(tmp_path: Path) -> None:
    first = state.token(tmp_path)
    assert state.token(tmp_path) == first


def test_only_what_processes_need_passes_from_a_kernels_environment() -> None:
    needed = {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "HTTPS_PROXY": "http://proxy:3128",
        "LC_ALL": "C.UTF-8",
        "CUDA_VISIBLE_DEVICES": "0",
        "UV_INDEX_URL": "https://pypi.example/simple",
    }
    the_kernels_own = {
        "RUNPOD_API_KEY": "rpa_secret",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "HF_TOKEN": "hf_secret",
        "JPY_SESSION_NAME": "notebook.ipynb",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    assert passed_env.passed({**needed, **the_kernels_own}) == needed


def test_the_kernel_mark_is_the_one_the_worker_sets() -> None:
    assert kernels.KERNEL_MARK == executor.KERNEL_MARK
