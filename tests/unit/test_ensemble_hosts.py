"""Where `localhost` goes: a worker of this machine, or a temporary one started for the run;
and RUN as users name it. Fake worker lists and starters; the real ones are in the
integration tests."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal.core.errors import ConnectError, InputError
from shoal.ensemble.driver import find_run
from shoal.ensemble.hosts import TemporaryWorker, local_workers, resolve_hosts
from shoal.ensemble.spec import Component, Ensemble

HOST = socket.gethostname()


def ensemble(*hosts: str) -> Ensemble:
    return Ensemble(name="e", components=[Component(name=f"c{k}", host=host, command="true")
                                          for k, host in enumerate(hosts)])


def worker(name: str, host: str = HOST, address: str | None = "127.0.0.1",
           connected: bool = True) -> dict[str, Any]:
    return {"name": name, "host": host, "address": address, "connected": connected,
            "accepting": True}


class Workers:
    def __init__(self, *workers: dict[str, Any]):
        self.list = list(workers)

    def workers(self) -> list[dict[str, Any]]:
        return self.list


def refuse_to_start(workdir: Path) -> TemporaryWorker:
    raise AssertionError("no worker should be started")


def test_hosts_other_than_localhost_are_left_to_the_server(tmp_path: Path) -> None:
    placement = resolve_hosts(Workers(), [ensemble("h1", "10.0.0.7")], workdir=tmp_path,
                              start_worker=refuse_to_start)
    assert placement.workers == {} and placement.temporary == [] and placement.notes == []


def test_a_connected_worker_of_this_machine_serves_localhost(tmp_path: Path) -> None:
    source = Workers(worker("remote", address="192.0.2.10"),  # another machine
                     worker("same-name-elsewhere", address="198.51.100.3"),  # a namespace
                     worker("gone", connected=False),
                     worker("mine"))
    placement = resolve_hosts(source, [ensemble("localhost", "h1")], workdir=tmp_path,
                              start_worker=refuse_to_start)
    assert placement.workers == {"localhost": "mine"}
    assert placement.notes == ["localhost: worker mine, connected from this machine"]


def test_a_worker_named_localhost_is_taken_as_it_is(tmp_path: Path) -> None:
    placement = resolve_hosts(Workers(worker("localhost", address=None)), [ensemble("localhost")],
                              workdir=tmp_path, start_worker=refuse_to_start)
    assert placement.workers == {"localhost": "localhost"} and placement.notes == []


def test_local_workers_are_told_by_host_name_and_address() -> None:
    workers = [worker("a"), worker("b", host="other"), worker("c", address="::1"),
               worker("d", address="::ffff:127.0.0.1"), worker("e", address=None)]
    assert [w["name"] for w in local_workers(workers)] == ["a", "c", "d"]


def fake_temporary(source: Workers, *, joins: bool) -> Any:
    def start(workdir: Path) -> TemporaryWorker:
        process = subprocess.Popen([sys.executable, "-c",
                                    "import time; time.sleep(30)" if joins else "print(1)"])
        log = workdir / "worker.log"
        log.write_text("started\nthe server at https://x refused the worker token\n")
        if joins:
            source.list.append(worker("temp-1", address="10.9.9.9"))
        return TemporaryWorker("temp-1", workdir, process, log)
    return start


def test_no_worker_of_this_machine_starts_a_temporary_one(tmp_path: Path) -> None:
    source = Workers(worker("remote", host="far", address="192.0.2.10"))
    placement = resolve_hosts(source, [ensemble("localhost")], workdir=tmp_path,
                              start_worker=fake_temporary(source, joins=True))
    assert placement.workers == {"localhost": "temp-1"}
    assert placement.notes == ["localhost: no worker of this machine is connected; started "
                               f"temporary worker temp-1, working in {tmp_path}"]
    [temporary] = placement.temporary
    placement.release(keep=False)
    assert temporary.process.poll() is not None and placement.temporary == []


def test_a_temporary_worker_that_cannot_join_says_why(tmp_path: Path) -> None:
    source = Workers()
    with pytest.raises(ConnectError) as caught:
        resolve_hosts(source, [ensemble("localhost")], workdir=tmp_path,
                      start_worker=fake_temporary(source, joins=False))
    assert str(caught.value) == (
        "localhost: no worker of this machine is connected, and a temporary one could not "
        "join the server (the server at https://x refused the worker token): start "
        "`shoal worker` here")


def test_without_temporary_workers_localhost_needs_a_worker_here(tmp_path: Path) -> None:
    with pytest.raises(ConnectError, match="no worker of this machine is connected"):
        resolve_hosts(Workers(), [ensemble("localhost")], workdir=tmp_path,
                      allow_temporary=False, start_worker=refuse_to_start)


def test_a_run_is_named_by_id_or_by_its_ensembles_latest_run() -> None:
    runs = [{"run_id": 3, "name": "bench"}, {"run_id": 9, "name": "bench"},
            {"run_id": 5, "name": "web"}]
    assert find_run(runs, "4") == 4
    assert find_run(runs, "bench") == 9
    with pytest.raises(InputError, match="no ensemble run is named 'nope' "
                                         r"\(ensembles: bench, web\)"):
        find_run(runs, "nope")
