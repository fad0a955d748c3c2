"""Installing shoal on a host that has no internet: wheels made here, installed there offline.

Here: shoal's own wheel is built from the installed package (Python, so one wheel fits every
host; its version carries a digest of its files, so a host can tell this exact build from
another). The native launcher's compiled module goes along as it is: a host whose Python
takes it (the same version and platform) uses it, any other runs without it (see
worker/launcher.py); its C source stays here. The wheels of shoal's dependencies are fetched
for the host's Python and platform with `pip download`, into a cache kept per target.
There: the wheels go to `~/.shoal/wheels/`, a venv is made under `~/.shoal/venvs/`, and pip,
run from its own wheel, installs from that directory alone (`--no-index`, no configuration
file, `PIP_NO_INDEX`), so the host's pip never reaches an index. `~/.shoal/venv` points at
the venv in use.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import shoal
from shoal.provision.base import ProvisionError

MIN_PYTHON = (3, 11)
PIP_TIMEOUT_SECONDS = 900.0
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # in the wheel's entries: same files, same bytes
_ARCH_RE = re.compile(r"^linux-([A-Za-z0-9_]+)$")


@dataclass(frozen=True)
class Target:
    """A host's Python, as the probe found it."""

    python: str
    version: tuple[int, int, int]
    platform: str  # sysconfig.get_platform(): linux-x86_64, linux-aarch64, ...
    libc: tuple[str, str]  # ("glibc", "2.36"), or ("", "") for musl and others

    @classmethod
    def from_probe(cls, info: dict[str, Any]) -> Target:
        libc = info.get("libc") or ["", ""]
        return cls(python=str(info["exe"]), version=tuple(info["version"][:3]),
                   platform=str(info.get("platform") or ""),
                   libc=(str(libc[0] or ""), str(libc[1] or "")))

    @property
    def version_text(self) -> str:
        return ".".join(str(part) for part in self.version)

    @property
    def abi(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    def platform_tags(self) -> list[str]:
        """The wheel platform tags this host takes, best first (manylinux per glibc)."""
        match = _ARCH_RE.match(self.platform)
        if not match:
            raise ProvisionError(f"cannot fetch wheels for the platform {self.platform!r} "
                                 "(only Linux hosts can be bootstrapped)")
        arch = match.group(1)
        tags: list[str] = []
        if self.libc[0] == "glibc":
            major, _, minor = self.libc[1].partition(".")
            if major == "2" and minor.isdigit():
                tags += [f"manylinux_2_{m}_{arch}" for m in range(int(minor), 16, -1)]
                tags += [f"manylinux2014_{arch}"]
                if arch in ("x86_64", "i686"):
                    tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
        elif self.libc[0] == "":  # musl (Alpine): musllinux wheels, by the usual versions
            tags += [f"musllinux_1_{m}_{arch}" for m in (2, 1)]
        tags.append(f"linux_{arch}")
        return tags

    @property
    def key(self) -> str:
        libc = f"{self.libc[0]}{self.libc[1]}" or "nolibc"
        return f"{self.abi}-{self.platform}-{libc}"


# ---- shoal's own wheel -------------------------------------------------------------------


def _package_files() -> list[tuple[str, Path]]:
    root = Path(shoal.__file__).resolve().parent
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts \
                and path.suffix not in (".pyc", ".c"):
            files.append((f"shoal/{path.relative_to(root).as_posix()}", path))
    return files


def _distribution_text(name: str) -> str | None:
    try:
        return metadata.distribution("shoal").read_text(name)
    except metadata.PackageNotFoundError:
        return None


def build_own_wheel(directory: Path) -> tuple[Path, str]:
    """This shoal as a wheel in `directory`: (its path, its version `X+gDIGEST`)."""
    files = _package_files()
    digest = hashlib.sha256()
    for arcname, path in files:
        digest.update(arcname.encode() + b"\0" + path.read_bytes() + b"\0")
    base_metadata = _distribution_text("METADATA")
    if base_metadata is None:
        raise ProvisionError("cannot find shoal's package metadata to build its wheel")
    digest.update(base_metadata.encode())
    version = f"{shoal.__version__}+g{digest.hexdigest()[:12]}"
    wheel = directory / f"shoal-{version}-py3-none-any.whl"
    if wheel.exists():
        return wheel, version
    lines = [line for line in base_metadata.splitlines() if not line.startswith("Version:")]
    lines.insert(1, f"Version: {version}")
    dist_info = f"shoal-{version}.dist-info"
    entries: list[tuple[str, bytes]] = [(arcname, path.read_bytes()) for arcname, path in files]
    entries.append((f"{dist_info}/METADATA", ("\n".join(lines) + "\n").encode()))
    entries.append((f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: shoal\n"
                                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    entry_points = _distribution_text("entry_points.txt") or \
        "[console_scripts]\nshoal = shoal.cli.main:main\n"
    entries.append((f"{dist_info}/entry_points.txt", entry_points.encode()))
    record = []
    for arcname, data in entries:
        hashed = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arcname},sha256={hashed},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
    directory.mkdir(parents=True, exist_ok=True)
    partial = wheel.with_suffix(f".{os.getpid()}.part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, data in entries:
            info = zipfile.ZipInfo(arcname, _FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    os.replace(partial, wheel)
    return wheel, version


def requirements() -> list[str]:
    """shoal's dependencies (no extras), and pip, to install them with."""
    required = metadata.requires("shoal") or []
    return [*[item for item in required if "extra" not in item.partition(";")[2]], "pip"]


# ---- the dependencies' wheels ------------------------------------------------------------


def cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shoal" / "wheels"


def fetch_wheels(target: Target, cache: Path | None = None) -> tuple[list[Path], Path, str]:
    """Every wheel a host like `target` needs: (the wheels, shoal's own, its version).

    The dependencies come from `pip download` here (this machine's index and settings), only
    as wheels for the target's Python and platform; kept in the cache, fetched once."""
    cache = cache or cache_directory()
    own, version = build_own_wheel(cache / "own")
    wanted = requirements()
    where = cache / target.key
    marker = where / ".complete"
    stamp = hashlib.sha256("\n".join(wanted).encode()).hexdigest()
    if not (marker.exists() and marker.read_text().strip() == stamp):
        where.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet",
                   "--disable-pip-version-check", "--only-binary=:all:", "--dest", str(where),
                   "--python-version", f"{target.version[0]}.{target.version[1]}",
                   "--implementation", "cp", "--abi", target.abi, "--abi", "abi3",
                   "--abi", "none"]
        for tag in target.platform_tags():
            command += ["--platform", tag]
        command += wanted
        try:
            result = subprocess.run(command, capture_output=True, text=True,
                                    timeout=PIP_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ProvisionError(f"pip download for {target.key} took longer than "
                                 f"{PIP_TIMEOUT_SECONDS:.0f}s") from None
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"exit {result.returncode}"
            raise ProvisionError(f"cannot fetch wheels for Python {target.version_text} on "
                                 f"{target.platform} ({target.key}): {reason}")
        marker.write_text(stamp + "\n")
    wheels = sorted(where.glob("*.whl"))
    return [*wheels, own], own, version


# ---- on the host ------------------------------------------------------------------------

# Run by the host's Python with one JSON argument: makes the venv `venv` (once; a lock keeps
# two `shoal up` from doing it at once), installs `requirement` from `wheels` alone, points
# ~/.shoal/venv at it. Prints one JSON object.
INSTALL_PYTHON = r"""
import fcntl, json, os, shutil, subprocess, sys
spec = json.loads(sys.argv[1])
home = os.path.expanduser("~")
shoal_dir = os.path.join(home, ".shoal")
venv = os.path.join(shoal_dir, "venvs", spec["build"])
if not os.path.isdir(os.path.dirname(venv)):
    os.makedirs(os.path.dirname(venv), 0o700)
lock = open(os.path.join(shoal_dir, "bootstrap.lock"), "w")
fcntl.flock(lock, fcntl.LOCK_EX)
marker = os.path.join(venv, ".shoal-installed")

def fail(step, result):
    lines = [l for l in (result.stderr or result.stdout or "").splitlines() if l.strip()]
    print(json.dumps({"error": step + ": " + (lines[-1].strip() if lines else
                                               "exit %d" % result.returncode)}))
    sys.exit(1)

if not os.path.exists(marker):
    shutil.rmtree(venv, ignore_errors=True)
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if made.returncode:
        fail("python -m venv", made)
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("PIP_"):
            del env[key]
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    python = os.path.join(venv, "bin", "python")
    pip = os.path.join(spec["wheels"], spec["pip_wheel"], "pip")
    installed = subprocess.run(
        [python, pip, "install", "--no-index", "--find-links", spec["wheels"], "--quiet",
         spec["requirement"]], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True)
    if installed.returncode:
        shutil.rmtree(venv, ignore_errors=True)
        fail("pip install", installed)
    with open(marker, "w") as handle:
        handle.write(spec["requirement"] + "\n")
link = os.path.join(shoal_dir, "venv")
partial = link + ".new"
if os.path.lexists(partial):
    os.remove(partial)
os.symlink(venv, partial)
os.replace(partial, link)
print(json.dumps({"shoal": os.path.join(venv, "bin", "shoal")}))
"""


def pip_wheel_name(wheels: list[Path]) -> str:
    for wheel in wheels:
        if wheel.name.startswith("pip-"):
            return wheel.name
    raise ProvisionError("pip's own wheel is missing from the wheels to upload")


def install_arguments(wheels_dir: str, wheels: list[Path], version: str) -> dict[str, str]:
    return {"wheels": wheels_dir, "pip_wheel": pip_wheel_name(wheels),
            "requirement": f"shoal=={version}", "build": version.replace("+", "-")}

