"""Ensembles whose hosts are all `localhost`, run with no server to start.

The same service, ensemble runner and worker agent as a real deployment, in this process: they
live on an event loop in a background thread, and the command line calls them through the
same methods it calls on a server's Client, so one code path follows both. State lives in
`.shoal/` beside the ensemble's file (or `$SHOAL_HOME` when set), as for `shoal run`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from shoal.ensemble.spec import LOCALHOST
from shoal.home import DATABASE_FILE, lock_home
from shoal.server.blobs import BlobStore
from shoal.server.ensembles import EnsembleRequest, EnsembleRunner
from shoal.server.reactor import ReactorConfig
from shoal.server.service import Service
from shoal.store import Store
from shoal.worker.agent import Agent, InProcessLink
from shoal.worker.resources import detect_resources

T = TypeVar("T")
# A long poll here is a wait on an event; no network to spare it from.
MAX_WAIT_SECONDS = 30.0


class LocalEnsembles:
    """A service with one worker, "localhost", answering as a server's Client does.

    Use it as a context manager: entering starts the service and the worker, leaving kills
    what still runs and saves the state.
    """

    def __init__(self, home: Path, *, workdir: Path | None = None):
        self.home = home
        # Where components with a relative directory (NetJobs commands) run.
        self.workdir = workdir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="shoal-ensemble")
        self._lock_fd: int | None = None
        self._service: Service | None = None
        self._runner: EnsembleRunner | None = None
        self._blobs = BlobStore(home / "blobs")
        self._agent: Agent | None = None
        self._worker_id: int | None = None

    def __enter__(self) -> LocalEnsembles:
        self._lock_fd = lock_home(self.home)
        self._thread.start()
        try:
            self._call(self._open())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._service is not None:
                self._call(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # ---- what the command line calls, as on a Client ----------------------------------

    def missing_blobs(self, sha256s: Iterable[str]) -> list[str]:
        return self._blobs.missing(sha256s)

    def put_blob(self, sha256: str, path: str | os.PathLike[str],
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        from shoal.core.errors import InputError

        stored = self._blobs.put_file(Path(path))
        if stored != sha256:
            raise InputError(f"{path}: changed while being read (SHA-256 {stored}, "
                             f"not {sha256})")
        size = self._blobs.path_of(stored).stat().st_size
        if progress is not None:
            progress(size)
        return {"sha256": stored, "size": size}

    def start_ensemble(self, request: Mapping[str, Any]) -> dict[str, Any]:
        parsed = EnsembleRequest.model_validate(dict(request))
        return self._call(self._start(parsed))

    def ensemble(self, run_id: int, wait: float | None = None,
                 since: int | None = None) -> dict[str, Any]:
        return self._call(self._snapshot(run_id, wait, since))

    def cancel_ensemble(self, run_id: int) -> dict[str, Any]:
        return self._call(self._cancel(run_id))

    def logs(self, job_id: int, stream: str = "stdout",
             offset: int | None = None) -> dict[str, Any]:
        return self._call(self._logs(job_id, stream, offset))

    def workers(self) -> list[dict[str, Any]]:
        return self._call(self._workers())

    # ---- on the loop ------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _open(self) -> None:
        in_process = ReactorConfig(lost_grace_seconds=0.0, restart_grace_seconds=0.0)
        service = Service(Store(self.home / DATABASE_FILE), in_process)
        await service.start()
        self._service = service
        self._runner = EnsembleRunner(service)
        agent = Agent(LOCALHOST, detect_resources(), self.home / "spool",
                      fetch_blob=self._fetch_blob)
        agent.runner.workdir = self.workdir
        self._worker_id = service.join(agent.register_message(), InProcessLink(agent))
        agent.connected(lambda message: service.deliver(self._require_worker(), message))
        self._agent = agent

    async def _close(self) -> None:
        assert self._service is not None
        if self._agent is not None:
            self._agent.begin_stop()
            await self._agent.runner.shutdown(kill=True)
            await asyncio.sleep(0.05)  # let the last reports reach the service
        if self._worker_id is not None:
            self._service.leave(self._worker_id)
        await self._service.stop()

    def _require_worker(self) -> int:
        assert self._worker_id is not None
        return self._worker_id

    def _require_runner(self) -> EnsembleRunner:
        assert self._runner is not None
        return self._runner

    async def _fetch_blob(self, sha256: str, destination: Path) -> None:
        # A copy, not a link: the worker sets the file's mode, which must not touch the store.
        await asyncio.to_thread(shutil.copyfile, self._blobs.path_of(sha256), destination)

    async def _start(self, request: EnsembleRequest) -> dict[str, Any]:
        runner = self._require_runner()
        run_id = runner.start(request)
        return runner.snapshot(run_id)

    async def _snapshot(self, run_id: int, wait: float | None,
                        since: int | None) -> dict[str, Any]:
        runner = self._require_runner()
        if wait is not None and since is not None:
            await runner.wait_for_change(run_id, since, min(wait, MAX_WAIT_SECONDS))
        return runner.snapshot(run_id)

    async def _cancel(self, run_id: int) -> dict[str, Any]:
        self._require_runner().cancel(run_id)
        return {"cancelled": True}

    async def _workers(self) -> list[dict[str, Any]]:
        assert self._service is not None
        return [dict(worker) for worker in self._service.workers()]

    async def _logs(self, job_id: int, stream: str, offset: int | None) -> dict[str, Any]:
        """As GET /jobs/ID/logs: with `offset`, a running job's live output from there."""
        assert self._service is not None
        return await self._service.logs_from(job_id, stream, offset)
