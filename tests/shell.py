"""Run a shell block from the docs word for word, as a reader's terminal would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path


def run_bash(script: str, *, cwd: Path, env: Mapping[str, str], timeout: float) -> tuple[int, str]:
    """``bash -euo pipefail -c script`` in a session of its own; its exit status and output.

    Whatever the script leaves running (its background jobs) is stopped with its process
    group, also when it runs past ``timeout`` (then killed, exit status -9)."""
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    return process.returncode, out
