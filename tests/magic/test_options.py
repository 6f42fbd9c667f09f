"""Bad options are UsageErrors that name the option and what it accepts; good ones parse."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp

from tetra_magic.cloud.gpus import gpu_ids
from tetra_magic.magic import TetraMagic, parse_options
from tetra_magic.options import build, split_packages


@pytest.fixture(scope="module")
def magic() -> TetraMagic:
    return TetraMagic(globalipapp.get_ipython())  # the module's: see tests/magic/test_bad_input.py


def parse(magic: TetraMagic, line: str):
    return build(parse_options(line), magic)


def test_gpu_names_map_to_runpod_pools(magic: TetraMagic) -> None:
    opts = parse(magic, "--gpu a100 H100 --gpu 4090,h200")
    assert opts.gpu_ids == ("AMPERE_80", "ADA_80_PRO", "ADA_24", "HOPPER_141")


def test_pool_ids_are_taken_as_they_are() -> None:
    """README: a RunPod pool id such as AMPERE_80 is a --gpu value of its own."""
    assert gpu_ids(["AMPERE_80", "ada_24", "HOPPER_141"]) == ["AMPERE_80", "ADA_24", "HOPPER_141"]


def test_exact_gpu_type_names_pass_through() -> None:
    assert gpu_ids(["NVIDIA A100-SXM4-80GB", "6000 Ada"]) == ["NVIDIA A100-SXM4-80GB", "ADA_48_PRO"]


def test_unknown_gpu_names_the_option_and_the_valid_names(magic: TetraMagic) -> None:
    with pytest.raises(UsageError, match=r"--gpu: unknown GPU 'A1000'.*A100.*H200.*4090"):
        parse(magic, "--gpu A1000")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--cpu --gpu A100", "--cpu and --gpu"),
        ("--timeout -3", "--timeout must be a number of seconds above 0"),
        ("--timeout soon", "argument --timeout: invalid float value: 'soon'"),
        ("--local --endpoint abc", "--local and --endpoint"),
        ("--timeout 1e9", r"--timeout must be .* at most 604800 \(7 days\), not 1e\+09"),
        ("--frobnicate", r"unrecognized arguments: --frobnicate\n%%tetra options: --gpu --cpu"),
        ("--deps 'numpy>>2'", r"--deps: 'numpy>>2' is not a pip requirement"),
        ("--deps '-e .'", r"--deps: '-e .' is an installer option"),
        ("--system-deps 'Bad Name'", r"--system-deps: 'Bad Name' is not an apt package name"),
        ("--out 2x", r"--out: '2x' is not a Python variable name"),
        ("--out print", r"--out: 'print' would hide the builtin print\(\); choose another name"),
        ("--endpoint ftp://x/v2/abc", r"--endpoint: 'ftp://x/v2/abc' is not an endpoint URL"),
        ("--endpoint a/b", r"--endpoint: 'a/b' is not an endpoint id"),
        ('--deps "numpy', r"%%tetra: the options have an unclosed quote"),
        ("--send a,class", r"--send: 'class' is not a Python variable name"),
        ("--env 1X=2", r"--env: '1X=2' is not NAME=VALUE or NAME"),
        ("--env TETRA_SURELY_UNSET_VAR", r"--env: TETRA_SURELY_UNSET_VAR is not set in the kernel"),
        ("--env 'A=a\x00b'", r"--env: the value of A holds a NUL character"),
    ],
)
def test_bad_options_are_usage_errors(magic: TetraMagic, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(magic, line)


def test_deps_split_on_commas_and_spaces_and_repeat(magic: TetraMagic) -> None:
    opts = parse(magic, "--deps numpy>=1.2,<3 tabulate --deps six,pkg[a,b]")
    assert opts.dependencies == ("numpy>=1.2,<3", "tabulate", "six", "pkg[a,b]")


def test_defaults_come_from_config(magic: TetraMagic) -> None:
    magic.default_gpu = "H100"
    magic.default_deps = ["six"]
    magic.timeout = 42.0
    try:
        opts = parse(magic, "--deps tabulate")
    finally:
        magic.default_gpu, magic.default_deps, magic.timeout = "any", [], 600.0
    assert opts.gpu_ids == ("ADA_80_PRO",)
    assert opts.dependencies == ("six", "tabulate")
    assert opts.timeout == 42.0


def test_split_packages_keeps_version_lists_whole() -> None:
    assert split_packages([["a>=1,<2,b", "c"]]) == ("a>=1,<2", "b", "c")


def test_quoted_values_are_unquoted(magic: TetraMagic) -> None:
    """IPython splits the magic line keeping quotes; pip must not see them."""
    opts = parse(magic, "--deps 'torch>=2.3' \"pkg[a,b]\" --name 'my job'")
    assert opts.dependencies == ("torch>=2.3", "pkg[a,b]")
    assert opts.name == "my job"


def test_send_drop_and_env(magic: TetraMagic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "secret-from-kernel")
    opts = parse(magic, "--send a,b --send c --drop model --env HF_TOKEN MODE=fast --env X=a=b")
    assert opts.send == ("a", "b", "c")
    assert opts.drop == ("model",)
    assert opts.env == (("HF_TOKEN", "secret-from-kernel"), ("MODE", "fast"), ("X", "a=b"))


def test_system_deps_default_from_config(magic: TetraMagic) -> None:
    magic.default_system_deps = ["ffmpeg"]
    try:
        opts = parse(magic, "--system-deps libgl1,git=1:2.39.2-1")
    finally:
        magic.default_system_deps = []
    assert opts.system_dependencies == ("ffmpeg", "libgl1", "git=1:2.39.2-1")


@pytest.mark.parametrize(
    ("line", "items"),
    [
        ("--map f in ['a.csv', 'b.csv'] --out sweep", "['a.csv', 'b.csv']"),
        ('--local --map f in ["a b", "c"]', '["a b", "c"]'),
        ("--map lr in [0.1, 0.03]  --workers 2", "[0.1, 0.03]"),
        ("--map k in {'a': 1}.items()", "{'a': 1}.items()"),
    ],
)
def test_map_items_are_the_python_as_written(magic: TetraMagic, line: str, items: str) -> None:
    """--map's expression keeps its quotes and spaces, and ends at the next option."""
    opts = build(parse_options(line), magic)
    assert (opts.map_name, opts.map_items) == (line.split()[line.split().index("--map") + 1], items)
    assert eval(opts.map_items)  # a Python expression a notebook can evaluate


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--map n in range(9) --batch 0", r"--batch is how many --map items one job runs: 1 or"),
        ("--map n in range(9) --batch -2", r"1 or more, not -2"),
        ("--local --batch 3", r"--batch sets how many --map items one job runs: use it with --map"),
    ],
)
def test_batch_is_one_or_more_items_and_only_with_map(
    magic: TetraMagic, line: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        parse(magic, line)


def test_batch_sets_the_items_per_job(magic: TetraMagic) -> None:
    assert parse(magic, "--map n in range(9) --batch 3").batch == 3
    assert parse(magic, "--map n in range(9)").batch is None  # fan_out's default


def test_map_binds_one_name_and_says_how_to_unpack_a_pair(magic: TetraMagic) -> None:
    with pytest.raises(UsageError, match=r"--map binds one NAME; unpack it in the cell"):
        parse(magic, "--map a, b in zip(xs, ys)")
