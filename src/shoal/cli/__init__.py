"""The `shoal` command line. `main.py` builds the app; each verb module stays thin:
parse, call the client, render.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's answer as JSON.")]

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

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:  # the token stays out of reprs
        return f"Session(server={self.server!r}, debug={self.debug})"


def session_of(ctx: typer.Context) -> Session:
    session: Session = ctx.ensure_object(Session)
    return session
