"""Shared by the benchmarks: timing loops, the machine, and rewriting one section of RESULTS.md."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_HEADER = "# Benchmark results\n\nEach section is written by its benchmark; rerun it to refresh.\n"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def replace_section(text: str, section: str) -> str:
    """``text`` with the section titled like ``section`` replaced (or appended); others untouched."""
    title = section.split("\n", 1)[0].rstrip()
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        head = text if text.strip() else RESULTS_HEADER
        return head.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def write_results(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(replace_section(text, section), encoding="utf-8")


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md."""
    write_results(path, f"## {title}\n\n{body.strip()}\n")


def measure(call: Callable[[], object], n: int) -> tuple[float, list[float]]:
    """Run ``call`` n times: (CPU µs per call, wall latencies in seconds)."""
    return interleaved({"call": call}, n, max(n, 1))["call"]


def turns(names: list[str], n: int, block: int) -> Iterator[tuple[str, int]]:
    """(name, how many calls) in the order ``interleaved`` runs them: blocks of ``block``
    taken in turn, the order rotating from block to block, until each name has had n."""
    for turn in range((n + block - 1) // block):
        count = min(block, n - turn * block)
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            yield name, count


def interleaved(
    calls: dict[str, Callable[[], object]], n: int, block: int = 50
) -> dict[str, tuple[float, list[float]]]:
    """Run each of ``calls`` n times, in blocks of ``block`` taken in turn (see ``turns``):
    (CPU µs per call, wall latencies in seconds) by name.

    On a shared machine the speed drifts from one second to the next; blocks of a few dozen
    milliseconds give every call the same drift, so a difference of a few percent between
    two of them is measurable, where whole rounds taken one after the other are not."""
    cpu = dict.fromkeys(calls, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for name, count in turns(list(calls), n, block):
        call, times = calls[name], latencies[name]
        start_cpu = time.process_time()
        for _ in range(count):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        cpu[name] += time.process_time() - start_cpu
    return {name: (cpu[name] / n * 1e6, latencies[name]) for name in calls}


def pct(values: list[float], q: float) -> float:
    """The q-quantile of latencies in seconds, in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
