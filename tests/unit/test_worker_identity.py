"""A worker's secret is kept across its restarts, and never shared by two live workers."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from shoal.worker.identity import kept_secret, release_all, secret_file

SHOW_SECRET = "import sys; from pathlib import Path; " \
    "from shoal.worker.identity import kept_secret; print(kept_secret(Path(sys.argv[1])))"


def secret_of_a_new_process(spool: Path) -> str:
    return subprocess.run([sys.executable, "-c", SHOW_SECRET, str(spool)], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_restarted_worker_keeps_its_secret_in_its_spool_directory(tmp_path: Path) -> None:
    spool = tmp_path / "spool" / "w1"
    first = secret_of_a_new_process(spool)
    assert len(first) == 32 and int(first, 16) >= 0
    assert secret_of_a_new_process(spool) == first  # the same worker, restarted
    assert secret_of_a_new_process(tmp_path / "spool" / "w2") != first
    assert stat.S_IMODE(secret_file(spool).stat().st_mode) == 0o600


def test_a_second_live_worker_of_the_directory_draws_its_own(tmp_path: Path) -> None:
    held = kept_secret(tmp_path)  # this process holds the file's lock until release_all
    try:
        assert secret_of_a_new_process(tmp_path) != held
        assert secret_file(tmp_path).read_text().strip() == held
    finally:
        release_all()
    assert secret_of_a_new_process(tmp_path) == held  # let go: the next one keeps it


def test_a_damaged_file_is_replaced_and_an_unwritable_directory_still_gives_a_secret(
        tmp_path: Path) -> None:
    secret_file(tmp_path).write_text("not a secret\n")
    fresh = secret_of_a_new_process(tmp_path)
    assert secret_file(tmp_path).read_text().strip() == fresh
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    assert len(kept_secret(blocked / "spool")) == 32


def test_a_symlink_in_place_of_the_file_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    spool = tmp_path / "spool"
    spool.mkdir()
    secret_file(spool).symlink_to(victim)
    assert len(secret_of_a_new_process(spool)) == 32
    assert victim.read_text() == "precious\n"
