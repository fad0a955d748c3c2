"""What a worker offers: GPU detection from the environment and nvidia-smi, and the worker
command's --gpus, --resource and --label values."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli.serve import parse_gpus_option, parse_label_options, parse_resource_options
from shoal.core.errors import InputError
from shoal.worker.resources import detect_gpus, detect_resources, parse_visible_devices

# ---- GPU detection ------------------------------------------------------------------------


def fake_nvidia_smi(directory: Path, body: str) -> None:
    """An executable `nvidia-smi` in `directory`, running the shell `body`."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)


@pytest.fixture
def no_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,2", ["0", "2"]),
        (" 1 , 3 ", ["1", "3"]),
        ("GPU-8e2c1f3a,GPU-19ab", ["GPU-8e2c1f3a", "GPU-19ab"]),
        ("", []),
        ("-1", []),
        ("NoDevFiles", []),
        ("0,-1,2", ["0"]),  # CUDA stops at the first invalid id
        ("1,1", ["1"]),
    ],
)
def test_cuda_visible_devices_decides_the_offer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, expected: list[str]
) -> None:
    fake_nvidia_smi(tmp_path, 'printf "0\\n1\\n2\\n3\\n"')  # ignored: the variable wins
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert detect_gpus() == expected
    assert parse_visible_devices(value) == expected


@pytest.mark.usefixtures("no_visible_devices")
def test_nvidia_smi_indexes_are_offered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_nvidia_smi(tmp_path, 'printf "0\\n1\\n"')
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert detect_gpus() == ["0", "1"]
    assert detect_resources().gpus == ["0", "1"]
    assert detect_resources(with_gpus=False).gpus == []


@pytest.mark.usefixtures("no_visible_devices")
@pytest.mark.parametrize(
    "body",
    [
        'echo "NVIDIA-SMI has failed" >&2; exit 3',
        'echo "No devices were found"',
        "echo 0; echo GPU-1",
    ],
    ids=["non-zero-exit", "no-devices-message", "garbage"],
)
def test_a_failing_nvidia_smi_offers_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str
) -> None:
    fake_nvidia_smi(tmp_path, body)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert detect_gpus() == []


@pytest.mark.usefixtures("no_visible_devices")
def test_no_nvidia_smi_offers_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing to find
    assert detect_gpus() == []


@pytest.mark.usefixtures("no_visible_devices")
def test_an_unrunnable_nvidia_smi_offers_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == []


# ---- --gpus -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", ["0", "1"]),
        ("0", []),
        ("0,2", ["0", "2"]),
        ("3,", ["3"]),
        (" 1, 3 ", ["1", "3"]),
        ("GPU-8e2c1f3a,MIG-GPU-8e2c1f3a/1/0", ["GPU-8e2c1f3a", "MIG-GPU-8e2c1f3a/1/0"]),
    ],
)
def test_gpus_option(text: str, expected: list[str]) -> None:
    assert parse_gpus_option(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is neither a count nor a list"),
        ("-1", "is neither a count nor a list"),
        ("0,,2", "is neither a count nor a list"),
        ("0 2", "is neither a count nor a list"),
        ("²", "is neither a count nor a list"),
        ("0,0", "names a GPU twice"),
        ("2000", "at most 1024"),
    ],
)
def test_bad_gpus_option(text: str, message: str) -> None:
    with pytest.raises(InputError, match=r"^--gpus: ") as caught:
        parse_gpus_option(text)
    assert message in str(caught.value)


# ---- --resource ---------------------------------------------------------------------------


def test_resource_options() -> None:
    assert parse_resource_options([]) == {}
    assert parse_resource_options(["licenses=4", "fpga.x@lab+1=1", " tokens = 10 "]) == {
        "licenses": 4,
        "fpga.x@lab+1": 1,
        "tokens": 10,
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("licenses", "--resource: 'licenses' is not NAME=N"),
        ("=4", "--resource: '=4' is not NAME=N"),
        ("lic enses=4", "--resource: bad name 'lic enses'"),
        ("a:b=4", "--resource: bad name 'a:b'"),
        ("cores=4", "--resource: 'cores' is offered with --cores"),
        ("memory=4", "--resource: 'memory' is offered with --memory"),
        ("gpus=4", "--resource: 'gpus' is offered with --gpus"),
        ("licenses=0", "--resource: licenses: the amount must be a whole number from 1"),
        ("licenses=-2", "--resource: licenses: the amount must be a whole number from 1"),
        ("licenses=1.5", "--resource: licenses: the amount must be a whole number from 1"),
        ("licenses=", "--resource: licenses: the amount must be a whole number from 1"),
    ],
)
def test_bad_resource_option(item: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_resource_options([item])
    assert str(caught.value).startswith(message)


def test_a_resource_given_twice_is_refused() -> None:
    with pytest.raises(InputError, match=r"^--resource: 'licenses' is given twice$"):
        parse_resource_options(["licenses=4", "licenses=2"])


# ---- --label ------------------------------------------------------------------------------


def test_label_options() -> None:
    assert parse_label_options([]) == {}
    assert parse_label_options(["zone=a", "arch=x86_64", "url=http://x/?a=b"]) == {
        "zone": "a",
        "arch": "x86_64",
        "url": "http://x/?a=b",  # only the first '=' separates
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["zone"], "--label: 'zone' is not KEY=VALUE"),
        (["zone="], "--label: 'zone=' is not KEY=VALUE"),
        (["=a"], "--label: '=a' is not KEY=VALUE"),
        (["my zone=a"], "--label: bad key 'my zone'"),
        (["zone=a\nb"], "--label: zone: the value must be printable"),
        (["zone=" + "x" * 257], "--label: zone: the value must be printable"),
        (["zone=a", "zone=b"], "--label: 'zone' is given twice"),
    ],
)
def test_bad_label_option(items: list[str], message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_label_options(items)
    assert str(caught.value).startswith(message)
