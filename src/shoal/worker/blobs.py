"""Fetch a file's content from the server by its SHA-256, for staging.

Streamed to disk and hashed on the way, so a blob of any size costs one pass and little memory,
and content that does not match its name is refused. httpx is imported on first use: a worker
that never stages files (and `shoal run`) does not pay for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path

from shoal.worker.staging import StagingError

_CHUNK_BYTES = 1 << 20
_TIMEOUT_SECONDS = 60.0  # per connect or read, not for the whole transfer
_RATE_LIMITED_RETRIES = 10


async def download_blob(server_url: str, token: str | None, sha256: str,
                        destination: Path, verify: ssl.SSLContext | None = None) -> None:
    """GET {server_url}/api/v1/blobs/{sha256} into `destination`; StagingError if it fails.
    Refused for the request rate (429), it waits as the server says and asks again."""
    import httpx

    from shoal.client import retry_after_seconds

    url = f"{server_url.rstrip('/')}/api/v1/blobs/{sha256}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    digest = hashlib.sha256()
    try:
        async with httpx.AsyncClient(timeout=_TIMEOUT_SECONDS, verify=verify or False) as client:
            for attempt in range(_RATE_LIMITED_RETRIES + 1):
                async with client.stream("GET", url, headers=headers) as response:
                    if response.status_code == 429 and attempt < _RATE_LIMITED_RETRIES:
                        wait = retry_after_seconds(response.headers.get("retry-after"))
                        await asyncio.sleep(wait)
                        continue
                    if response.status_code != 200:
                        raise StagingError(f"the server answered {response.status_code} for "
                                           f"blob {sha256}")
                    with open(destination, "wb") as file:
                        async for chunk in response.aiter_bytes(_CHUNK_BYTES):
                            digest.update(chunk)
                            file.write(chunk)
                    break
    except httpx.HTTPError as exc:
        raise StagingError(f"cannot fetch blob {sha256}: {exc or type(exc).__name__}") from None
    if digest.hexdigest() != sha256:
        raise StagingError(f"blob {sha256} arrived with SHA-256 {digest.hexdigest()}")
