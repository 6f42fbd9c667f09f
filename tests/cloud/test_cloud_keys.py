"""Where the RunPod key comes from, and what is said about it: RUNPOD_API_KEY first, then the
runpod CLI's ~/.runpod/config.toml; a file that cannot give a key is named, never guessed at."""

from __future__ import annotations

from pathlib import Path

import pytest

from tetra_magic.cloud import credentials


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    (tmp_path / ".runpod").mkdir()
    return tmp_path


def write_config(home: Path, text: str) -> Path:
    path = home / ".runpod" / "config.toml"
    path.write_text(text)
    return path


def test_the_environment_variable_comes_first(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(home, '[default]\napi_key = "from-file"\n')
    monkeypatch.setenv("RUNPOD_API_KEY", " from-env \n")
    key, source = credentials.api_key()
    assert key == "from-env" and source == "the RUNPOD_API_KEY environment variable"
    assert repr(key) == "<RunPod API key>" and "from-env" not in repr((key, source))
    assert f"Bearer {key}" == "Bearer from-env"


def test_the_config_file_default_profile(home: Path) -> None:
    path = write_config(home, '[other]\napi_key = "no"\n[default]\napi_key = "from-file"\n')
    assert credentials.api_key() == ("from-file", str(path))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[default]\napi_key = ""\n', "no api_key in its [default] profile"),
        ('[other]\napi_key = "x"\n', "no api_key in its [default] profile"),
        ('api_key = "top-level"\n', "no api_key in its [default] profile"),
        ("[default\n", "unreadable: TOMLDecodeError"),
    ],
)
def test_a_config_file_without_a_usable_key_is_named(home: Path, text: str, problem: str) -> None:
    path = write_config(home, text)
    assert credentials.api_key() == (None, f"{path} ({problem})")


def test_no_key_anywhere(home: Path) -> None:
    assert credentials.api_key() == (None, "")
