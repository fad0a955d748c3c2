"""--pipe: stdin cut into blocks of whole lines, each the stdin of one job (GNU parallel's).

A block is at most `--block` bytes of whole lines (a line longer than that is a block of its
own), cut where GNU parallel cuts; with `--header :`, stdin's first line goes before each.
Blocks are written to the run's state directory as they are read, so memory stays flat
however much is piped in and however slow the jobs are, and a job run again (a retry,
`--resume-failed`) reads the same bytes. A block is deleted once its job has succeeded.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from shoal.core.errors import InputError
from shoal.run.arrivals import arrivals

BLOCKS = "blocks"  # under the run's state directory
DEFAULT_BLOCK_BYTES = 1024 * 1024  # parallel's --block 1M
READ_BYTES = 1 << 16


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPkmgtp]?)\s*$")
_UNITS = {"": 1, **{unit: 1024 ** (power + 1) for power, unit in enumerate("KMGTP")},
          **{unit: 1000 ** (power + 1) for power, unit in enumerate("kmgtp")}}


def parse_block(text: str) -> int:
    """--block: bytes, or with parallel's units: K, M, G, T, P count in 1024s, and k, m, g,
    t, p in 1000s (`1M` is 1048576, `1m` 1000000)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise InputError(f"--block: {text!r} is not a size (such as 100k or 4M)")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size < 1:
        raise InputError(f"--block: {text!r} is less than a byte")
    return size


def cut(data: bytes | bytearray, block: int, final: bool) -> int:
    """How many bytes at the start of `data` make the next block: the whole lines within
    `block` bytes, or the first line if it alone is longer; at the end of the input (`final`),
    what is left if it is less. 0: more input is needed first."""
    if len(data) < block:
        return len(data) if final else 0
    end = data.rfind(b"\n", 0, block) + 1
    if end:
        return end
    end = data.find(b"\n", block) + 1  # one line longer than a block: the whole of it
    return end or (len(data) if final else 0)


def block_path(directory: Path, number: int) -> Path:
    return directory / str(number)


def piped(command: str, path: Path) -> str:
    """The job's command, with the block as its stdin (for all of it, whatever it is)."""
    return f"exec <{shlex.quote(str(path))}; {command}"


class Blocks:
    """stdin's blocks, read by a thread and written to `directory` (with none, a dry run,
    only counted). At most `ahead` blocks are waiting or running at once: the thread reads on
    as jobs end, as parallel does, so a large input never lands on the disk all at once."""

    def __init__(self, handle: BinaryIO, size: int, directory: Path | None, ahead: int,
                 *, header: bool = False):
        self.handle = handle
        self.size = size
        self.directory = directory
        self.header = header  # the first line goes before every block (--header :)
        self._room = threading.Semaphore(ahead)
        self._closed = threading.Event()
        self.sizes: dict[int, int] = {}  # block -> bytes, until its job ends

    def ended(self, number: int, succeeded: bool) -> None:
        """A block's job ended (or was skipped): room for the next; a block that succeeded
        is not needed again."""
        self.sizes.pop(number, None)
        if succeeded and self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                block_path(self.directory, number).unlink()
        self._room.release()

    def close(self) -> None:
        self._closed.set()

    async def numbers(self) -> AsyncIterator[list[int]]:
        """The numbers of the blocks written, as they come."""
        if self.directory is not None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        async for numbers in arrivals(self._read, "shoal-run-pipe"):
            yield numbers

    def _read(self, put: Callable[[int], None]) -> None:
        buffer = bytearray()
        header: bytes | None = None if self.header else b""
        number = 0
        final = False
        try:
            while not final:
                chunk = os.read(self.handle.fileno(), READ_BYTES)
                final = not chunk
                buffer += chunk
                if header is None:  # --header: the first line, whole, before any block
                    end = buffer.find(b"\n") + 1 or (len(buffer) if final else 0)
                    if not end:
                        continue
                    header = bytes(buffer[:end])
                    del buffer[:end]
                while length := cut(buffer, self.size, final):
                    while not self._room.acquire(timeout=0.2):
                        if self._closed.is_set():
                            return
                    number += 1
                    if self.directory is not None:
                        with open(block_path(self.directory, number), "wb") as out:
                            out.write(header)
                            out.write(buffer[:length])
                    del buffer[:length]
                    self.sizes[number] = len(header) + length
                    put(number)
        except ValueError:  # the handle was closed: the run is over
            pass
        # Any other error (a full disk, say) ends the blocks, and is raised in the loop.
