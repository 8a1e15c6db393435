"""Shared by the multi-process benchmarks: child processes stopped by pid, a JSON-lines worker
protocol with time-bounded replies, CPU and RSS over a set of processes (psutil), and the
share of the machine that other processes used meanwhile."""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped]

__all__ = ["Children", "OtherLoad", "PySpy", "Worker", "cpu_seconds", "serve_commands", "wait_until"]


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of a process, every thread (clock-tick resolution)."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def wait_until(ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``ready`` until true; a RuntimeError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:g} s")
        time.sleep(interval)


class Children:
    """The processes a benchmark starts; on exit each is stopped by its pid (SIGTERM, then
    SIGKILL after ``grace`` seconds), whatever happened."""

    def __init__(self, grace: float = 10.0) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.grace = grace

    def start(self, argv: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), **options)
        self.procs.append(proc)
        return proc

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        self.procs.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Worker:
    """A child process that answers one JSON line on its stdout for each JSON line on its stdin
    (the other side is :func:`serve_commands`); every reply is awaited at most ``timeout`` s."""

    def __init__(self, children: Children, name: str, argv: Sequence[str], **options: Any) -> None:
        self.name = name
        self.proc = children.start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **options)
        self.ps = psutil.Process(self.proc.pid)
        self._buffer = b""

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout:g} s")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited (code {self.proc.wait(5)})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def call(self, timeout: float, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        return self.read(timeout)


def serve_commands(handle: Callable[[dict[str, Any]], dict[str, Any] | None], hello: dict[str, Any]) -> None:
    """The worker side: ``hello`` first, then one reply per command until ``{"op": "quit"}`` or
    end of input. Replies go to a private copy of stdout; fd 1 then points at stderr, so that
    nothing a library prints can break the protocol."""
    out: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out.write(json.dumps(hello) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("op") == "quit":
            break
        try:
            reply = handle(command) or {}
        except Exception as exc:  # reported to the driver, which stops the run
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")


class OtherLoad:
    """The share of all cores used by processes other than ``ours`` while the block ran (the
    benchmark wants the cores to itself; this says whether it had them)."""

    def __init__(self, ours: Callable[[], Iterable[psutil.Process]]) -> None:
        self._ours = ours
        self._start = (0.0, 0.0, 0.0)
        self.share = math.nan

    def _sample(self) -> tuple[float, float, float]:
        machine = psutil.cpu_times()
        busy = sum(getattr(machine, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        ours = 0.0
        for proc in self._ours():
            with contextlib.suppress(psutil.Error):
                ours += cpu_seconds(proc)
        return time.monotonic(), busy, ours

    def __enter__(self) -> OtherLoad:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        wall, busy, ours = (b - a for a, b in zip(self._start, end, strict=True))
        if wall > 0:
            self.share = max(0.0, busy - ours) / (wall * (os.cpu_count() or 1))


class PySpy:
    """py-spy (``pip install py-spy``) samples some processes while the block runs: Python
    stacks of the threads holding the GIL, idle ones left out, without pausing them. After
    the block, :meth:`stacks` gives each process's collapsed stacks (stack -> samples)."""

    def __init__(
        self, children: Children, procs: dict[str, psutil.Process], directory: Path, rate: int = 250
    ):
        found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if found is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.rate = rate
        self._children = children
        self._files = {name: directory / f"py-spy-{name.replace(' ', '-')}.txt" for name in procs}
        options = ["--rate", str(rate), "--format", "raw", "--gil", "--nonblocking", "--duration", "120"]
        self._argv = {
            name: [found, "record", "--pid", str(proc.pid), *options, "--output", str(self._files[name])]
            for name, proc in procs.items()
        }
        self._spies: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> PySpy:
        for name, argv in self._argv.items():
            self._files[name].unlink(missing_ok=True)
            self._spies.append(
                self._children.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        time.sleep(1.0)  # attached and sampling (py-spy reads the interpreter's state first)
        return self

    def __exit__(self, *exc: object) -> None:
        for spy in self._spies:  # SIGINT: py-spy stops and writes what it sampled
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)
        for spy in self._spies:
            spy.wait(30)

    def stacks(self, name: str) -> Counter[str]:
        """Collapsed stacks (frames joined by ';', outermost first) -> samples."""
        out: Counter[str] = Counter()
        with contextlib.suppress(FileNotFoundError):
            for line in self._files[name].read_text(errors="replace").splitlines():
                stack, _, count = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[stack] += int(count)
        return out
