"""What shoal runs on a host over SSH: small Python programs, given as `python -c`, that find
the host's Python and shoal, start a worker detached from the SSH session, and stop it.

They run on whatever Python the host has, so they keep to what Python 3.6 knows. Arguments
go as one JSON argument; the worker's connection string (it carries a token) only ever goes
through standard input and the worker's environment, never a command line.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

# Each line it prints: the word PROBE and a JSON object about one Python.
PROBE_PYTHON = r"""
import json, os, platform, sys
info = {"exe": sys.argv[1], "version": list(sys.version_info[:3]), "home": os.path.expanduser("~")}
try:
    import sysconfig
    info["platform"] = sysconfig.get_platform()
    info["libc"] = list(platform.libc_ver())
    info["implementation"] = sys.implementation.name
except Exception:
    pass
try:
    from importlib.metadata import version
    info["shoal"] = version("shoal")
except Exception:
    info["shoal"] = None
print("PROBE " + json.dumps(info))
sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)
"""

# The Python of a bootstrapped venv, then those on PATH, best first: each interpreter once,
# up to the first of 3.11 or later. Then the `shoal` on PATH, if any, and its version (asked
# of its own interpreter: cheaper than starting the whole command); where PATH had no 3.11 or
# later, that interpreter is probed too, so a host whose only Python is shoal's own will do.
VENV_PYTHON = "$HOME/.shoal/venv/bin/python"
PYTHON_CANDIDATES = ("python3", "python3.14", "python3.13", "python3.12", "python3.11", "python")
SHOAL_VERSION_PYTHON = "from importlib.metadata import version; print(version('shoal'))"


def probe_command() -> str:
    code = shlex.quote(PROBE_PYTHON)
    loop = " ".join(f'"{name}"' for name in PYTHON_CANDIDATES)
    script = (
        f'[ -x "{VENV_PYTHON}" ] && "{VENV_PYTHON}" -c {code} "{VENV_PYTHON}" 2>/dev/null; '
        'seen=" "; found=""; '
        f"for p in {loop}; do "
        'exe=$(command -v "$p" 2>/dev/null) || continue; '
        'real=$(readlink -f "$exe" 2>/dev/null || echo "$exe"); '
        'case "$seen" in *" $real "*) continue;; esac; '
        'seen="$seen$real "; '
        f'"$exe" -c {code} "$exe" 2>/dev/null && {{ found=1; break; }}; '
        "done; "
        "if s=$(command -v shoal 2>/dev/null); then "
        "i=$(head -n 1 \"$s\" | sed -n 's/^#! *//p' | cut -d ' ' -f 1); "
        f'[ -z "$found" ] && [ -x "$i" ] && "$i" -c {code} "$i" 2>/dev/null; '
        f'v=$([ -x "$i" ] && "$i" -c {shlex.quote(SHOAL_VERSION_PYTHON)} 2>/dev/null); '
        '[ -n "$v" ] || v=$("$s" --version 2>/dev/null | head -n 1 | sed "s/^shoal //"); '
        'echo "SHOAL $s $v"; fi; '
        "exit 0"
    )
    return "sh -c " + shlex.quote(script)


# Starts a worker in a session of its own (no SSH session, no terminal, survives the
# logout), its output in ~/.shoal/up/NAME.log, its pid in ~/.shoal/up/NAME.pid. Reads the
# connection string from stdin and hands it over in SHOAL_JOIN. Prints one JSON object.
LAUNCH_PYTHON = r"""
import json, os, subprocess, sys, time
spec = json.loads(sys.argv[1])
join = sys.stdin.readline().strip()
home = os.path.expanduser("~")
base = os.path.join(home, ".shoal", "up")
os.makedirs(base, 0o700, exist_ok=True)  # two hosts may share one home (NFS), started at once
os.chmod(os.path.join(home, ".shoal"), 0o700)
name = spec["name"]
log_path = os.path.join(base, name + ".log")
env = dict(os.environ)
for key in ("SHOAL_SERVER", "SHOAL_TOKEN", "SHOAL_HOME"):
    env.pop(key, None)
env["SHOAL_JOIN"] = join
env["PYTHONUNBUFFERED"] = "1"
log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
process = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                           env=env, cwd=home, start_new_session=True, close_fds=True)
os.close(log)
with open(os.path.join(base, name + ".pid"), "w") as handle:
    handle.write(str(process.pid) + "\n")
deadline = time.time() + spec.get("settle", 1.0)
while time.time() < deadline and process.poll() is None:
    time.sleep(0.05)
code = process.poll()
tail = ""
if code is not None:
    with open(log_path, "rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 4000))
        tail = handle.read().decode("utf-8", "replace")
print(json.dumps({"pid": process.pid, "exit": code, "log": log_path, "tail": tail}))
"""

# Stops the worker `pid` if it is still the one named `name`: SIGTERM (it hands its jobs
# back and stops them), then after `grace` seconds SIGKILL; then whatever it had started and
# is still there (its keeper, its jobs, the workers of --count) once they had time to go.
STOP_PYTHON = r"""
import json, os, signal, sys, time
spec = json.loads(sys.argv[1])
pid, name, grace = spec["pid"], spec["name"], spec.get("grace", 20.0)

def stat(p):
    try:
        with open("/proc/%d/stat" % p) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[19])  # state, ppid, start time
    except (OSError, IndexError, ValueError):
        return None

def alive(p, start):
    info = stat(p)
    return info is not None and info[0] != "Z" and info[2] == start

def ours():
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            words = handle.read().split(b"\0")
    except OSError:
        return False
    return b"worker" in words and name.encode() in words

def descendants():
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = stat(int(entry))
            if info is not None:
                children.setdefault(info[1], []).append((int(entry), info[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found

def wait(processes, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not any(alive(p, s) for p, s in processes):
            return True
        time.sleep(0.1)
    return not any(alive(p, s) for p, s in processes)

how = "gone"
if ours():
    start = stat(pid)[2]
    family = descendants()
    how = "stopped"
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
    if not wait([(pid, start)], grace):
        how = "killed"
        for p, s in [(pid, start)] + family:
            if alive(p, s):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
    if not wait(family, 10.0):
        for p, s in family:
            if alive(p, s):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        wait(family, 5.0)
base = os.path.join(os.path.expanduser("~"), ".shoal", "up")
try:
    os.remove(os.path.join(base, name + ".pid"))
except OSError:
    pass
print(json.dumps({"how": how}))
"""

# Whether the worker `pid` named `name` still runs there; if not, the end of its log.
ALIVE_PYTHON = r"""
import json, sys
spec = json.loads(sys.argv[1])
try:
    with open("/proc/%d/cmdline" % spec["pid"], "rb") as handle:
        words = handle.read().split(b"\0")
    alive = b"worker" in words and spec["name"].encode() in words
except OSError:
    alive = False
tail = ""
if not alive and spec.get("log"):
    try:
        with open(spec["log"], "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 4000))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        pass
print(json.dumps({"alive": alive, "tail": tail}))
"""


def python_command(python: str, code: str, arguments: Mapping[str, Any]) -> str:
    return " ".join(shlex.quote(word) for word in (python, "-c", code, json.dumps(arguments)))


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of `text` that is a JSON object (a program's answer), or None."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None
