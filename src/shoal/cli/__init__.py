"""The `shoal` command line. `main.py` builds the app; each verb module stays thin:
parse, call the client, render.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's answer as JSON.")]
StateDirOption = Annotated[Path | None, typer.Option(
    "--state-dir", metavar="DIR",
    help="Read a `shoal run`'s state (its .shoal directory, or one run's directory in it) "
         "instead of asking a server; with no server, ./.shoal ($SHOAL_HOME when set) is "
         "read.")]

if TYPE_CHECKING:  # httpx is imported only by verbs that talk to a server
    from shoal.client import Client


@dataclass
class Session:
    """The global options of one invocation, and the client they lead to (made on first use)."""

    server: str | None = None
    token: str | None = None
    debug: bool = False
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        if self._client is None:
            from shoal.client import Client

            self._client = Client(self.server, self.token)
        return self._client

    def reader(self, state_dir: Path | None) -> Client:
        """For the verbs that only read (status, jobs, logs): `shoal run`'s state read
        directly when `state_dir` is given, or when no server is set up and ./.shoal holds
        a run; otherwise the server's client."""
        if self._client is not None:
            return self._client
        from shoal.core.errors import ConnectError
        from shoal.run.local import RunState

        if state_dir is not None:
            self._client = cast("Client", RunState(state_dir))
            return self._client
        try:
            return self.client()
        except ConnectError:
            from shoal.run.state import default_state_dir

            found = default_state_dir() if self.server is None else None
            if found is None:
                raise
            self._client = cast("Client", RunState(found))
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:  # the token stays out of reprs
        return f"Session(server={self.server!r}, debug={self.debug})"


def session_of(ctx: typer.Context) -> Session:
    session: Session = ctx.ensure_object(Session)
    return session

