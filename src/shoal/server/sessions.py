"""One WebSocket per worker: register, then a reader feeding the service and a writer queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import WebSocket, WebSocketDisconnect

from shoal.core.errors import NameTaken, ProtocolError, ShoalError
from shoal.core.protocol import (
    Refused,
    Register,
    ToWorker,
    decode_from_worker,
    encode,
)
from shoal.server.events import Events
from shoal.server.permissions import bearer_token, check
from shoal.server.service import Service

log = logging.getLogger("shoal.server")
REGISTER_TIMEOUT_SECONDS = 10.0


class WebSocketLink:
    """Sends are queued and written by one task, so the service never waits on a socket."""

    immediate = False  # see WorkerLink

    def __init__(self, websocket: WebSocket, token_hash: str, events: Events | None = None):
        self._websocket = websocket
        self._events = events  # counts the messages sent
        self.token_hash = token_hash  # revoking the token closes this channel
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())

    def send(self, message: ToWorker) -> None:
        text = encode(message)
        self._outbox.put_nowait(text)
        if self._events is not None:
            self._events.worker_message("out", message.type, len(text))

    def close(self, reason: str) -> None:
        self._outbox.put_nowait(None)

    async def _write(self) -> None:
        try:
            while (text := await self._outbox.get()) is not None:
                await self._websocket.send_text(text)
            await self._websocket.close()
        except Exception:  # the socket went away; the reader notices and cleans up
            return

    async def finish(self) -> None:
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)


async def worker_session(websocket: WebSocket) -> None:
    tokens = websocket.app.state.tokens
    try:
        principal = check("WEBSOCKET", "/api/v1/worker",
                          tokens.principal_of(bearer_token(websocket)))
    except ShoalError as exc:  # refused before the upgrade: the client sees 403
        log.warning("worker channel refused from %s: %s",
                    websocket.client.host if websocket.client else "?", exc)
        await websocket.close(code=4403, reason=str(exc)[:120])
        return
    assert principal is not None
    await websocket.accept()
    service: Service = websocket.app.state.service
    worker_id: int | None = None
    link = WebSocketLink(websocket, principal.token_hash, service.events)
    try:
        first = await asyncio.wait_for(websocket.receive_text(), REGISTER_TIMEOUT_SECONDS)
        register = decode_from_worker(first)
        if not isinstance(register, Register):
            raise ProtocolError("the first message must be a register")
        address = websocket.client.host if websocket.client is not None else None
        worker_id = service.join(register, link, address=address,
                                 credential=principal.token_hash)
        while True:
            # The decoder refuses a message over MAX_MESSAGE_BYTES (and the socket, bigger ones).
            text = await websocket.receive_text()
            message = decode_from_worker(text)
            service.events.worker_message("in", message.type, len(text))
            service.deliver(worker_id, message)
    except (WebSocketDisconnect, asyncio.CancelledError):
        pass
    except (ShoalError, TimeoutError) as exc:
        log.warning("worker session closed: %s", exc or "no register in time")
        with contextlib.suppress(Exception):
            await websocket.send_text(encode(Refused(
                reason=str(exc) or "no register in time",
                name_clash=("held" if exc.held else "connected")
                if isinstance(exc, NameTaken) else None)))
            await websocket.close(code=4400)
    except Exception:
        log.exception("worker session failed")
    finally:
        if worker_id is not None:
            service.leave(worker_id)
        await link.finish()
