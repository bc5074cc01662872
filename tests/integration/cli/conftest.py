"""The command line as a user runs it: `python -m guardstream ...` in a child process with
stdin that is not a terminal (a pipe or /dev/null), against the test's own namespace."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from guardstream.runtime.settings import Settings
from tests.support.processes import env_for


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


async def guardstream(
    settings: Settings,
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 240,
) -> Ran:
    """Run one command to its end, off the event loop's thread (the test may be running a
    process such as triage in the same loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guardstream",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env_for(settings, **(env or {})),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
