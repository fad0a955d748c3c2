"""The Python client of a shoal server: one method per HTTP API call, errors in shoal's tree.

    with shoal.Client() as client:           # finds the server through $SHOAL_HOME
        result = client.add([shoal.JobSpec(cmd="echo hi")])
        client.status(wait=10, since=version)  # long poll

Everything foreign (httpx exceptions, HTTP error statuses) is translated here, at the boundary.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx

from shoal.core.arrays import FIRST_ARRAY_JOBS
from shoal.core.errors import (
    AuthError,
    BatchInputError,
    Conflict,
    ConnectError,
    InputError,
    NotFound,
    ServerError,
    ShoalError,
    StoreUnavailable,
)
from shoal.home import Connection, resolve_connection
from shoal.trust import certificate_problem

if TYPE_CHECKING:  # pydantic is not imported until a caller builds JobSpecs
    from shoal.core.models import JobSpec

    Spec = JobSpec | Mapping[str, Any]

API_PREFIX = "/api/v1"
# A long poll is held by the server for up to `wait` seconds; allow that plus a margin.
LONG_POLL_MARGIN_SECONDS = 10.0
# An add is answered once committed, which for a million jobs takes a while: allow for it.
ADD_SECONDS_PER_JOB = 0.0002
ADD_CHUNK = 20_000  # jobs per request: a larger add goes in chunks, committed as one
_JOB_INDEX = re.compile(r"(jobs|cmds)\[(\d+)\]")
# The server copies the whole database before it sends the first byte of a backup.
BACKUP_WAIT_SECONDS = 3600.0
SQLITE_HEADER = b"SQLite format 3\x00"
# A request refused for its rate (429) is sent again after the server's Retry-After.
RATE_LIMITED_RETRIES = 3
MAX_RETRY_AFTER_SECONDS = 5.0
UPLOAD_CHUNK_BYTES = 1 << 20

_ERROR_BY_STATUS: dict[int, type[ShoalError]] = {
    400: InputError,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    408: InputError,
    413: InputError,
    422: InputError,
    431: InputError,
    503: StoreUnavailable,
}


@dataclass(frozen=True, slots=True)
class AddResult:
    """The server's answer to an add: counts, and the job id of each input spec in order."""

    added: int
    existed: int
    requeued: int
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ArrayResult:
    """The server's answer to an array: its id and size, and its tasks made jobs at once
    (the ids of the first ones; the rest are made as workers take them)."""

    array: int
    tasks: int
    added: int
    existed: int
    ids: tuple[int, ...]


class Client:
    """A synchronous client. Reuses one connection; close it, or use it as a context manager."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30):
        """`url` is an https/http URL or a `shoal://` connection string; what is not given
        comes from SHOAL_SERVER/SHOAL_TOKEN, then `$SHOAL_HOME/server.json`. The server's
        certificate is checked against the pinned CA, or the system's trust store."""
        connection = resolve_connection(server=url, token=token)
        self.url = connection.url
        self.timeout = timeout
        self._pinned_ca = connection.ca_fingerprint  # to say whether a refusal is the pin's
        headers = {"Accept": "application/json"}
        if connection.admin_token:
            headers["Authorization"] = f"Bearer {connection.admin_token}"
        self._http = httpx.Client(base_url=self.url + API_PREFIX, headers=headers,
                                  timeout=timeout, verify=_verify(connection))

    def __repr__(self) -> str:  # the token stays out of reprs
        return f"Client(url={self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- the API -----------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        """`{"version": ..., "protocol_version": ...}`; needs no token."""
        return self._request("GET", "/version")

    def add(self, specs: Iterable[JobSpec | Mapping[str, Any]], rerun: bool = False,
            progress: Callable[[int], None] | None = None) -> AddResult:
        """Add a batch of jobs, accepted whole or not at all.

        Each spec is a JobSpec, or a dict of its fields that is sent as it is (the server
        checks it), or a CommandOf (fields many jobs share, and a command). A spec whose
        (cmd, cwd) is already known is not added again; with `rerun`,
        such a job that has ended (done, failed or cancelled) is queued again. More than
        ADD_CHUNK jobs go in chunks (`specs` is read as it goes, so a generator keeps memory
        to a chunk), kept by the server and committed as one; `progress` is told the number
        sent after each chunk. From the third chunk on, `specs` is read in a thread of its
        own, a chunk ahead of the one being sent.
        """
        chunks = _chunks(specs, ADD_CHUNK)
        first = next(chunks, [])
        second = next(chunks, None)
        if second is None:
            answer = self._request("POST", "/jobs", json={"jobs": [_fields(spec) for spec in first],
                                                          "rerun": rerun},
                                   timeout=self.timeout + len(first) * ADD_SECONDS_PER_JOB)
        else:
            bodies = itertools.chain([_chunk_body(first), _chunk_body(second)],
                                     _ahead(map(_chunk_body, chunks)))
            answer = self._add_in_chunks(bodies, rerun, progress)
        return AddResult(
            added=answer["added"],
            existed=answer["existed"],
            requeued=answer.get("requeued", 0),
            ids=tuple(answer["ids"]),
        )

    def add_array(self, spec: JobSpec | Mapping[str, Any], array: str) -> ArrayResult:
        """One job for each number of `array` (Slurm's syntax: "1-100", "1-100:10",
        "1,5,9"), each {} of the spec's cmd and name replaced by the number, and
        SHOAL_ARRAY_INDEX and SHOAL_ARRAY_ITEM in its env. The server keeps it as one record
        and makes its tasks into jobs as workers take them: ten million cost what ten do."""
        job = dict(spec) if isinstance(spec, Mapping) else spec.model_dump(
            mode="json", exclude_defaults=True)
        answer = self._request("POST", "/arrays", json={"job": job, "array": array},
                               timeout=self.timeout + FIRST_ARRAY_JOBS * ADD_SECONDS_PER_JOB)
        return ArrayResult(array=answer["array"], tasks=answer["tasks"],
                           added=answer["added"], existed=answer["existed"],
                           ids=tuple(answer["ids"]))

    def arrays(self) -> list[dict[str, Any]]:
        """The arrays added (an admin's: everyone's), with how many of their tasks are jobs."""
        answer: dict[str, Any] = self._request("GET", "/arrays")
        return list(answer["arrays"])

    def _add_in_chunks(self, bodies: Iterable[dict[str, Any]], rerun: bool,
                       progress: Callable[[int], None] | None) -> dict[str, Any]:
        batch = secrets.token_hex(16)
        sent = 0
        try:
            for seq, body in enumerate(bodies):
                count = len(body.get("jobs") or body["cmds"])
                try:
                    self._request("POST", f"/adds/{batch}", json={"seq": seq, **body},
                                  timeout=self.timeout + count * ADD_SECONDS_PER_JOB)
                except InputError as exc:  # name the job by its place in the whole add
                    raise _batch_error(_in_whole_add(str(exc), sent)) from None
                sent += count
                if progress is not None:
                    progress(sent)
            try:
                answer: dict[str, Any] = self._request(
                    "POST", f"/adds/{batch}/commit", json={"rerun": rerun},
                    timeout=self.timeout + sent * ADD_SECONDS_PER_JOB)
            except InputError as exc:
                raise _batch_error(str(exc)) from None
            return answer
        except BaseException:  # a refused chunk, a bad line further on, Ctrl-C: add nothing
            with contextlib.suppress(ShoalError, httpx.HTTPError):
                self._request("DELETE", f"/adds/{batch}")
            raise

    def jobs_page(self, *, after_id: int | None = None, limit: int = 1000,
                  newest_first: bool = False, **filters: Any) -> dict[str, Any]:
        """One page: `{"jobs": [...], "total": N or None, "next_after_id": ID or None}`.
        Filters: state (one or a list), group, name, cmd (text it contains), worker,
        exit_code, ended_after, ended_before."""
        params: dict[str, Any] = {"limit": limit, "order": "desc" if newest_first else "asc"}
        if after_id is not None:
            params["after_id"] = after_id
        for key, value in filters.items():
            if value is None:
                continue
            if key == "state" and not isinstance(value, str):
                value = ",".join(value)
            params[key] = value
        return self._request("GET", "/jobs", params=params)

    def jobs(self, *, limit: int | None = None, newest_first: bool = False,
             page_size: int = 1000, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching job (or the first `limit`), oldest first (or newest), fetched a page
        at a time as the iteration goes: memory stays that of one page."""
        after_id: int | None = None
        left = limit
        while left is None or left > 0:
            size = page_size if left is None else min(page_size, left)
            page = self.jobs_page(after_id=after_id, limit=size, newest_first=newest_first,
                                  **filters)
            yield from page["jobs"]
            if left is not None:
                left -= len(page["jobs"])
            after_id = page.get("next_after_id")
            if after_id is None:
                return

    def job(self, job_id: int) -> dict[str, Any]:
        """A job with its stdout/stderr head and tail and its attempt history."""
        return self._request("GET", f"/jobs/{int(job_id)}")

    def logs(self, job_id: int, stream: str = "stdout",
             offset: int | None = None) -> dict[str, Any]:
        """`{"job_id", "stream", "state", "head", "tail", "total_bytes"}`. With `offset`, a
        running job's live output from that byte on: `{..., "offset", "data", "live": true}`
        (a job that is not running answers as without it)."""
        params: dict[str, Any] = {"stream": stream}
        if offset is not None:
            params["offset"] = offset
        return self._request("GET", f"/jobs/{int(job_id)}/logs", params=params)

    def kill(self, ids: Iterable[int] | None = None, group: str | None = None) -> dict[str, Any]:
        """Cancel queued jobs at once and ask workers to kill running ones."""
        return self._request("POST", "/jobs/kill", json=_selection(ids, group))

    def retry(self, ids: Iterable[int] | None = None, group: str | None = None) -> dict[str, Any]:
        """Queue failed and cancelled jobs again; jobs in other states are skipped."""
        return self._request("POST", "/jobs/retry", json=_selection(ids, group))

    def modify(self, ids: Iterable[int] | None = None, group: str | None = None, *,
               changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change jobs that are not running, all or none (see JobChanges for the fields)."""
        return self._request("POST", "/jobs/modify",
                             json={**_selection(ids, group), "changes": dict(changes)})

    def purge(self, states: Iterable[str], *, ended_before: float | None = None,
              group: str | None = None) -> dict[str, Any]:
        """Remove ended jobs in bulk (history), e.g. done ones that ended before a time."""
        body: dict[str, Any] = {"state": list(states), "group": group}
        if ended_before is not None:
            body["ended_before"] = ended_before
        return self._request("POST", "/jobs/purge", json=body)

    def remove(self, ids: Iterable[int] | None = None, group: str | None = None) -> dict[str, Any]:
        """Forget jobs that are not running (a running one is a Conflict)."""
        return self._request("POST", "/jobs/remove", json=_selection(ids, group))

    def status(
        self, group: str | None = None, wait: float | None = None, since: int | None = None
    ) -> dict[str, Any]:
        """Counts per state. With `wait` and `since`, returns once the version differs from
        `since`, or after `wait` seconds (at most 30): a long poll."""
        return self._long_poll("/status", {} if group is None else {"group": group}, wait, since)

    def workers(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self._request("GET", "/workers")["workers"]
        return answer

    def limits(self) -> list[dict[str, Any]]:
        """Every named concurrency limit: `{"name", "cap", "running", "queued"}` each."""
        answer: list[dict[str, Any]] = self._request("GET", "/limits")["limits"]
        return answer

    def set_limit(self, name: str, cap: int | None) -> dict[str, Any]:
        """Cap how many jobs of limit `name` run at once: 0 pauses them, None lifts the cap."""
        if name in ("", ".", ".."):  # no name, or one that would change the URL's path
            raise InputError(f"not a limit name: {name!r}")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise InputError(f"a limit's cap is a whole number, 0 or more, or None: {cap!r}")
        return self._request("PUT", f"/limits/{quote(name, safe='')}", json={"cap": cap})

    # ---- ensembles ---------------------------------------------------------------------

    def missing_blobs(self, sha256s: Iterable[str]) -> list[str]:
        """Which of these file contents the server does not hold yet."""
        answer: list[str] = self._request(
            "POST", "/blobs/missing", json={"sha256": list(sha256s)})["missing"]
        return answer

    def put_blob(self, sha256: str, path: str | os.PathLike[str],
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Upload a file's content, streamed; the server refuses it (InputError) unless its
        SHA-256 is `sha256`. `progress(n)` is called as each n bytes are sent."""
        source = Path(path)
        try:
            size = source.stat().st_size
            handle = source.open("rb")
        except OSError as exc:
            raise InputError(f"{source}: cannot read: {exc.strerror or exc}") from None

        def chunks() -> Iterator[bytes]:
            while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                yield chunk
                if progress is not None:
                    progress(len(chunk))

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with handle:
            return self._request("PUT", f"/blobs/{quote(sha256, safe='')}", content=chunks(),
                                 headers=headers, replayable=False)

    def start_ensemble(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Start a run of an ensemble: `{"ensemble", "manifests", "always_copy", "no_kill",
        "start"}`. Returns its first snapshot, with its `run_id`."""
        return self._request("POST", "/ensembles", json=dict(request))

    def ensemble(self, run: int | str, wait: float | None = None,
                 since: int | None = None) -> dict[str, Any]:
        """A snapshot of an ensemble run: its id, or an ensemble's name for its latest run.
        With `wait` and `since`, a long poll as `status`."""
        return self._long_poll(f"/ensembles/{self.ensemble_run_id(run)}", {}, wait, since)

    def ensemble_run_id(self, run: int | str) -> int:
        """A run's id from a run id, or an ensemble's name (its latest run). InputError names
        the ensembles there are when none has that name."""
        if isinstance(run, int) or run.isdigit():
            return int(run)
        from shoal.ensemble.driver import find_run

        return find_run(self.list_ensembles(), run)

    def _long_poll(self, path: str, params: dict[str, Any], wait: float | None,
                   since: int | None) -> Any:
        """GET `path`; with `wait` and `since` the server holds the answer until something
        changes, so the timeout allows for that."""
        timeout = self.timeout
        if wait is not None:
            params["wait"] = wait
            timeout = max(timeout, wait + LONG_POLL_MARGIN_SECONDS)
        if since is not None:
            params["since"] = since
        return self._request("GET", path, params=params, timeout=timeout)

    def cancel_ensemble(self, run: int | str) -> dict[str, Any]:
        """Stop an ensemble run (its id, or an ensemble's name for its latest run): one still
        going is cancelled; a detached one's services are stopped. `{"cancelled": true}`."""
        return self._request("POST", f"/ensembles/{self.ensemble_run_id(run)}/cancel")

    def list_ensembles(self, name: str | None = None) -> list[dict[str, Any]]:
        """The ensemble runs the server keeps (this token's): `{"run_id", "name", "state",
        "outcome", "reason", "started_at", "ended_at", "component_count",
        "services_running"}` each."""
        params = {"name": name} if name is not None else {}
        runs: list[dict[str, Any]] = self._request("GET", "/ensembles", params=params)["runs"]
        return runs

    def run_ensemble(self, path: str | os.PathLike[str], *, no_kill: bool = False,
                     always_copy: bool = False, sequential: bool = False,
                     muddler: str | os.PathLike[str] | None = None,
                     extra_args: str | None = None,
                     arg_parser: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
        """Run the ensembles of a file (TOML, NetJobs or remote_runner) as `shoal ensemble
        run` does, each followed until it ends (or detaches, leaving services running);
        their last snapshots, in order. A host `localhost` is a worker of this machine (one
        is started for the run if none is connected)."""
        from shoal.ensemble.driver import run_file

        return run_file(self, Path(path), no_kill=no_kill, always_copy=always_copy,
                        sequential=sequential,
                        muddler=Path(muddler) if muddler is not None else None,
                        extra_args=extra_args,
                        arg_parser=Path(arg_parser) if arg_parser is not None else None)

    # ---- the server itself -------------------------------------------------------------

    def server_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """`{"version", "draining", "started_at", "jobs", "running", "workers",
        "store_error"}`. `timeout` overrides the client's for this request."""
        return self._request("GET", "/server", timeout=timeout)

    def whoami(self) -> dict[str, Any]:
        """`{"name", "role"}` of this client's token."""
        return self._request("GET", "/whoami")

    def create_token(self, role: str, name: str) -> dict[str, Any]:
        """A new token for `name` with `role` (admin, user or worker): `{"name", "role",
        "token", "connection"}`, the connection string carrying it. The token is shown only
        now. Needs an admin token."""
        return self._request("POST", "/tokens", json={"role": role, "name": name})

    def tokens(self) -> list[dict[str, Any]]:
        """Every token made: `{"name", "role", "created_at", "revoked_at"}`, never the secret."""
        answer: list[dict[str, Any]] = self._request("GET", "/tokens")["tokens"]
        return answer

    def revoke_token(self, name: str) -> dict[str, Any]:
        """Revoke the token named `name` at once, closing worker channels opened with it."""
        return self._request("DELETE", f"/tokens/{quote(name, safe='')}")

    def drain(self) -> dict[str, Any]:
        """Ask the server to start no new job and to exit once none is running:
        `{"draining": true, "running": n}`. Asking again changes nothing."""
        return self._request("POST", "/server/drain")

    def stop_server(self) -> dict[str, Any]:
        """Ask the server to exit now; workers keep running their jobs and report them to
        the next server started on the same $SHOAL_HOME. `{"stopping": true}`."""
        return self._request("POST", "/server/stop")

    def backup(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> int:
        """Write a copy of the server's database, taken while it serves, to `path`; return
        its size in bytes. Needs the admin token.

        The copy is written beside `path` and renamed onto it once complete, so `path` is
        never a partial backup. An existing `path` is an InputError unless `overwrite`.
        """
        target = check_backup_path(path, overwrite=overwrite)
        partial = target.with_name(target.name + ".tmp")
        written = self._download("/server/backup", partial)
        try:
            with partial.open("rb") as copy:
                if copy.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                    raise ServerError(f"the server at {self.url} sent a backup that is not "
                                      "an SQLite database")
            _publish(partial, target, overwrite=overwrite)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            raise
        return written

    # ---- the boundary ------------------------------------------------------------------

    def _download(self, path: str, destination: Path) -> int:
        """Stream a GET's body into `destination` (created readable by its owner only: a
        database holds jobs' environments), synced to disk; return the bytes written."""
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, BACKUP_WAIT_SECONDS))
        try:
            with self._http.stream("GET", path, timeout=timeout,
                                   headers={"Accept": "application/octet-stream"}) as response:
                if not response.is_success:
                    raise error_from_response(response.status_code, response.read())
                return _write_file(destination, response.iter_bytes())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        except httpx.InvalidURL as exc:
            raise ConnectError(f"cannot reach the server at {self.url}: {exc}") from None

    def _unreachable(self, exc: httpx.TransportError) -> ConnectError:
        return ConnectError(f"cannot reach the server at {self.url}: "
                            f"{_describe(exc, self.url, self._pinned_ca)}")

    def _request(self, method: str, path: str, *, timeout: float | None = None,
                 replayable: bool = True, **kwargs: Any) -> Any:
        """`replayable`: the body can be sent again (not a stream), so a 429 is retried."""
        retries = RATE_LIMITED_RETRIES if replayable else 0
        for attempt in range(retries + 1):
            try:
                response = self._http.request(
                    method, path, timeout=self.timeout if timeout is None else timeout, **kwargs
                )
            except httpx.TransportError as exc:  # connect, timeout, protocol, network errors
                raise self._unreachable(exc) from None
            except httpx.InvalidURL as exc:
                raise ConnectError(f"cannot reach the server at {self.url}: {exc}") from None
            # A request refused for its rate was not looked at: it is safe to send again.
            if response.status_code != 429 or attempt == retries:
                break
            time.sleep(retry_after_seconds(response.headers.get("retry-after")))
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise ServerError(
                    f"the server at {self.url} sent a reply that is not JSON"
                ) from None
        raise error_from_response(response.status_code, response.content)


def _verify(connection: Connection) -> ssl.SSLContext | bool:
    """The pinned CA's context; the system's store for other https; nothing for http (httpx
    would load a CA bundle it never uses, a good part of a short command's time)."""
    context = connection.ssl_context()
    if context is not None:
        return context
    return not connection.url.startswith("http://")


def retry_after_seconds(header: str | None) -> float:
    """How long a 429's Retry-After asks to wait, within reason."""
    try:
        wanted = float(header or 1)
    except ValueError:
        wanted = 1.0
    return min(max(wanted, 0.05), MAX_RETRY_AFTER_SECONDS)


def error_from_response(status_code: int, body: bytes) -> ShoalError:
    """The shoal error for an HTTP error reply; its message is the server's own."""
    error_class = _ERROR_BY_STATUS.get(status_code, ServerError)
    return error_class(_error_message(status_code, body))


def _error_message(status_code: int, body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        detail = payload.get("detail")  # a framework-made reply that bypassed the error shape
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
            return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))
    reason = httpx.codes.get_reason_phrase(status_code) or "error"
    return f"the server answered HTTP {status_code} ({reason})"


def check_backup_path(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """`path` as a Path, if a backup may be written there; else an InputError naming it."""
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"{target.parent}: no such directory")
    if target.is_dir():
        raise InputError(f"{target}: is a directory")
    if not overwrite and (target.exists() or target.is_symlink()):
        raise InputError(f"{target}: already exists")
    return target


def _write_file(destination: Path, chunks: Iterator[bytes]) -> int:
    try:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise InputError(f"{destination}: cannot write: {exc.strerror}") from None
    written = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                written += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as exc:  # a full disk, a lost connection, Ctrl-C: leave nothing
        with contextlib.suppress(OSError):
            destination.unlink()
        if isinstance(exc, OSError):
            raise ShoalError(f"{destination}: cannot write: {exc.strerror or exc}") from None
        raise
    return written


def _publish(partial: Path, target: Path, *, overwrite: bool) -> None:
    """Rename the complete `partial` onto `target`, durably."""
    try:
        if overwrite:
            os.replace(partial, target)
        else:
            _link_without_replacing(partial, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # so that the rename itself survives a crash
        except OSError:  # some file systems cannot sync a directory; the file is synced
            pass
        finally:
            os.close(directory)
    except OSError as exc:
        raise ShoalError(f"{target}: cannot write: {exc.strerror or exc}") from None


def _link_without_replacing(partial: Path, target: Path) -> None:
    try:  # unlike a rename, a link does not replace a file made while the backup came
        os.link(partial, target)
    except FileExistsError:
        raise InputError(f"{target}: already exists") from None
    except OSError:  # a file system without hard links
        if target.exists() or target.is_symlink():
            raise InputError(f"{target}: already exists") from None
        os.replace(partial, target)
    else:
        partial.unlink()


def _describe(exc: httpx.TransportError, url: str, pinned: str | None) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    problem = certificate_problem(exc, url, pinned=pinned)  # expired, wrong name, not the pin's
    if problem is not None:
        return problem
    text = str(exc) or type(exc).__name__
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text:
        return "it does not speak TLS there; is the URL https:// rather than http://?"
    if "disconnected without sending a response" in text:
        return (f"{text.rstrip('.')}; a shoal server speaks TLS unless started with "
                "--insecure-http: use https:// or its connection string")
    return text


def _selection(ids: Iterable[int] | None, group: str | None) -> dict[str, Any]:
    """The body of kill/retry/remove: either ids or a group, never both, never neither."""
    id_list = None if ids is None else [int(job_id) for job_id in ids]
    if (id_list is None) == (group is None):
        raise InputError("name either job ids or a group")
    if id_list is not None and not id_list:
        raise InputError("no job ids given")
    return {"ids": id_list} if id_list is not None else {"group": group}


_BATCH_PLACE = re.compile(r"(?:jobs|cmds)\[(\d+)\]\.?|job (\d+) of the batch: ")


def _batch_error(message: str) -> InputError:
    """The server's refusal of an add, as BatchInputError when it names a job of the batch
    (`jobs[i].field: ...`, or `job N of the batch: ...`), so that the caller can name the
    job by where it came from (a file's line)."""
    place = _BATCH_PLACE.match(message)
    if place is None:
        return InputError(message)
    index = int(place[1]) if place[1] is not None else int(place[2]) - 1
    return BatchInputError(index, message[place.end():].lstrip(": ") or message, message)


def _in_whole_add(message: str, first: int) -> str:
    """An error about jobs[i] of a chunk whose first job is the add's `first`."""
    return _JOB_INDEX.sub(lambda match: f"{match[1]}[{int(match[2]) + first}]", message,
                          count=1)


T = TypeVar("T")


def _ahead(items: Iterator[T]) -> Iterator[T]:
    """`items`, the next one made in a thread while this one is used: an add reads and
    checks its next chunk while the server takes the last. Its errors are raised here, in
    their place; a consumer that stops early stops the thread."""
    made: queue.Queue[tuple[bool | None, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def give(entry: tuple[bool | None, Any]) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                made.put(entry, timeout=0.1)
                return True
        return False

    def make() -> None:
        try:
            for item in items:
                if not give((True, item)):
                    return
            give((False, None))
        except BaseException as exc:  # a bad line: raised where the chunk was wanted
            give((None, exc))

    threading.Thread(target=make, name="shoal-add-ahead", daemon=True).start()
    try:
        while True:
            more, value = made.get()
            if more is None:
                raise value
            if not more:
                return
            yield value
    finally:
        stop.set()


def _chunks(specs: Iterable[Spec], size: int) -> Iterator[list[Spec]]:
    """The specs, `size` at a time, read as they are needed."""
    iterator = iter(specs)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _fields(spec: Spec) -> dict[str, Any]:
    """A spec as the JSON the server reads."""
    return dict(spec) if isinstance(spec, Mapping) else spec.model_dump(
        mode="json", exclude_defaults=True)


class CommandOf(Mapping[str, Any]):
    """A job's fields as `shared` (one dict, not holding "cmd", given to many jobs) and its
    own command: what a file's plain lines make. A chunk of such jobs with the same `shared`
    is sent as its commands without comparing each job's fields (a million lines read 0.5 s
    faster). `shared` must not change once given."""

    __slots__ = ("cmd", "shared")

    def __init__(self, shared: Mapping[str, Any], cmd: str):
        self.shared, self.cmd = shared, cmd

    def __getitem__(self, name: str) -> Any:
        return self.cmd if name == "cmd" else self.shared[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.shared
        yield "cmd"

    def __len__(self) -> int:
        return len(self.shared) + 1


def _chunk_body(specs: list[Spec]) -> dict[str, Any]:
    """A chunk as it is sent: jobs alike but for their commands (a file's lines, say) as the
    fields they share and their commands, which spares the server most of its work on each;
    any other chunk as its jobs."""
    first = specs[0]
    if isinstance(first, CommandOf) and "cmd" not in first.shared:
        lines = [spec for spec in specs
                 if isinstance(spec, CommandOf) and spec.shared is first.shared]
        if len(lines) == len(specs):
            return {"cmds": [line.cmd for line in lines], "shared": dict(first.shared)}
    shared = _all_but_command(first)
    commands = [_command(spec) for spec in specs]
    if None in commands or any(_all_but_command(spec) != shared for spec in specs[1:]):
        return {"jobs": [_fields(spec) for spec in specs]}
    return {"cmds": commands, "shared": {
        name: value for name, value in _fields(specs[0]).items() if name != "cmd"}}


def _command(spec: Spec) -> str | None:
    command = spec.get("cmd") if isinstance(spec, Mapping) else spec.cmd
    return command if isinstance(command, str) else None


def _all_but_command(spec: Spec) -> dict[str, Any]:
    # A whole dict made and compared in C: a Python loop over the fields cost more.
    return {**(spec if isinstance(spec, Mapping) else vars(spec)), "cmd": None}
