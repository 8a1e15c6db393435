"""``meshctl top``: who calls whom, live — requests per second, errors and latency per edge.

The rows come from ``GET /v1/edges``: every workload's latest traffic summary, merged over
replicas. On a terminal the table refreshes in place (rich) until Ctrl-C or ``--count``
refreshes; otherwise, or with ``--once``, it prints once. ``-o json`` prints the rows as the
API gives them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..controlplane.client import ControlPlaneClient
from .output import printable, table

__all__ = ["HEADERS", "add_arguments", "cmd_top", "rows"]

HEADERS = ("SOURCE", "DESTINATION", "VERSION", "PROTOCOL", "RPS", "ERRORS", "P50 MS", "P99 MS", "AGE")


def _service(host: str) -> str:
    """``orders.shop`` for ``orders.shop.svc.cluster.local``; other hosts as they are."""
    name, _, rest = host.partition(".")
    namespace, _, tail = rest.partition(".")
    return f"{name}.{namespace}" if tail.startswith("svc.") else host


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def rows(edges: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = []
    for e in edges:
        source = "(outside the mesh)" if e["source"] == "unknown" else f"{e['source']}.{e['sourceNamespace']}"
        version = e["destinationVersion"]
        out.append(
            [
                source,
                _service(e["destination"]),
                "-" if version == "unknown" else version,
                e["protocol"],
                f"{e['rps']:.1f}",
                f"{100 * e['errorRate']:.1f}%",
                _ms(e["p50Ms"]),
                _ms(e["p99Ms"]),
                f"{e['ageSeconds']:.0f}s",
            ]
        )
    return out


def _rich_table(edges: Sequence[dict[str, Any]], server: str) -> Any:
    from rich.table import Table

    grid = Table(title=f"meshctl top — {server}", caption="Ctrl-C to stop", title_justify="left")
    for header in HEADERS:
        numeric = header in ("RPS", "ERRORS", "P50 MS", "P99 MS", "AGE")
        grid.add_column(header, justify="right" if numeric else "left", no_wrap=True)
    for edge, row in zip(edges, rows(edges), strict=True):
        style = "red" if edge["errorRate"] >= 0.05 else None
        grid.add_row(*(printable(c) for c in row), style=style)
    if not edges:
        grid.add_row("(no traffic reported yet)", *[""] * (len(HEADERS) - 1))
    return grid


def cmd_top(args: argparse.Namespace, client_of: Callable[[argparse.Namespace], ControlPlaneClient]) -> int:
    with client_of(args) as client:
        if args.output == "json":
            print(json.dumps(client.edges(), indent=2))
            return 0
        if args.once or not sys.stdout.isatty():
            edges = client.edges()["edges"]
            if not edges:
                print("No traffic reported yet (workloads report every MESH_EDGE_REPORT_INTERVAL seconds).")
                return 0
            print(table(HEADERS, rows(edges)))
            return 0
        from rich.live import Live

        with Live(_rich_table(client.edges()["edges"], client.url), auto_refresh=False) as live:
            shown = 1
            while args.count is None or shown < args.count:
                time.sleep(args.interval)
                live.update(_rich_table(client.edges()["edges"], client.url), refresh=True)
                shown += 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--once", action="store_true", help="print the table once (the default off a terminal)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.add_argument("--count", type=int, help="stop after this many refreshes (default: until Ctrl-C)")
