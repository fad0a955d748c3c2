"""Commands that need no shell start their program directly, with bash's argv, environment,
messages and exit codes; whatever bash would do otherwise still happens. Through a worker
(a job in a directory of its own: Popen) and through `shoal run` (posix_spawn)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .cluster import SHOAL, Cluster

PROGRAM = "import os, sys; print(repr(sys.argv[1:]), os.environ['PWD'], os.environ['_'])"


def _scripts(directory: Path) -> None:
    (directory / "argv.py").write_text(PROGRAM)
    script = directory / "noshebang"
    script.write_text("echo from-script $#\n")
    script.chmod(0o755)
    (directory / "notexec").write_text("echo never\n")


CASES = {  # command -> (exit code, text in stdout, text in stderr)
    f"{sys.executable} argv.py 'a b' \"c d\" ''": (0, "['a b', 'c d', '']", ""),
    "./noshebang x y": (0, "from-script 2", ""),  # ENOEXEC: bash runs it as a script
    "./notexec": (126, "", "Permission denied"),
    "no-such-program-4242 x": (127, "", "command not found"),
}


def test_jobs_of_a_worker_in_their_own_directory(cluster: Cluster, tmp_path: Path) -> None:
    _scripts(tmp_path)
    ids = cluster.api("POST", "/jobs", json={"jobs": [
        {"cmd": cmd, "cwd": str(tmp_path), "group": "direct"} for cmd in CASES]})["ids"]
    for job_id, (cmd, (code, out, err)) in zip(ids, CASES.items(), strict=True):
        job = cluster.wait_state(job_id, "done", "failed")
        assert job["exit_code"] == code, (cmd, job["stderr"])
        assert out in job["stdout"]["head"] and err in job["stderr"]["head"], cmd
    first = cluster.job(ids[0])["stdout"]["head"].split()
    assert first[-2:] == [str(tmp_path), sys.executable]  # PWD and _, as bash sets them


def test_jobs_of_shoal_run(tmp_path: Path) -> None:
    _scripts(tmp_path)
    (tmp_path / "jobs").write_text("".join(cmd + "\n" for cmd in CASES))
    result = subprocess.run([*SHOAL, "run", "jobs", "-k", "--json", "--results", "out"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin",
                                 "HOME": str(tmp_path)})
    assert json.loads(result.stdout)["failed"] == 2, result.stderr
    for line, (cmd, (code, out, err)) in enumerate(CASES.items(), start=1):
        results = next(path for path in (tmp_path / "out").rglob("cmd")
                       if path.read_text().strip() == cmd).parent
        assert (results / "exit_code").read_text().strip() == str(code), (line, cmd)
        assert out in (results / "stdout").read_text(), cmd
        assert err in (results / "stderr").read_text(), cmd
