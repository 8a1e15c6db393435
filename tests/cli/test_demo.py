"""``meshctl demo`` end to end: what it shows is true, and it leaves nothing behind."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time

import psutil
from rich.console import Console

from meshlib.cli.demo import run_demo
from meshlib.cli.demo_mesh import APP_SERVICES


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_the_demo_shows_what_the_mesh_does_and_it_is_true() -> None:
    before = _children()
    out = io.StringIO()
    report = run_demo(quick=True, console=Console(file=out, width=120))
    text = out.getvalue()
    # The canary: each step's split as configured (within 5 sigma), and none failed.
    assert [s.weights for s in report.steps] == [(90, 10), (50, 50), (0, 100)]
    for step in report.steps:
        assert step.sent == 200
        assert step.within_tolerance(), (step.weights, step.versions)
        assert step.failed == 0
    assert report.steps[-1].versions == {"v2": 200}
    assert report.tester == {"v2": 20}
    # The sick replica failed calls, retries on the other replica absorbed every one.
    assert report.faults > 20
    assert report.retries >= report.faults
    assert report.failed == 0
    assert report.sent >= 600
    # A call that skips the chain is denied by the ALLOW policies; a burst is rate limited.
    assert report.denied_status == "PERMISSION_DENIED"
    assert report.quotes[200] >= 5
    assert report.quotes[429] >= 1
    assert report.limited_by == "default/quote-limit"
    # One trace across the three services; traffic carried on without the config service.
    assert {"frontend", "orders", "inventory"} <= report.trace_services
    assert report.outage_sent == 100
    assert report.outage_failed == 0
    assert report.resumed
    assert len(report.identities) == len(APP_SERVICES) + 1
    assert all(row[2].startswith("spiffe://cluster.local/ns/default/sa/") for row in report.identities)
    for shown in ("PERMISSION_DENIED", "default/quote-limit", report.trace_id, "0 failed"):
        assert shown in text
    assert _children() == before  # every process it started is gone


def test_meshctl_demo_exits_0_with_plain_output_when_not_on_a_terminal() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "meshlib", "demo", "--quick"], capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 90
    assert "\x1b[" not in result.stdout  # no terminal escapes in a pipe
    assert "All as configured" in result.stdout
    assert "nothing is left running" in result.stdout


def _interruptible() -> None:
    """In the child: Ctrl-C as at a terminal. A shell's background job inherits SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler: the test must not depend on how
    pytest itself was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_process_the_demo_started() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "meshlib", "demo", "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if line.startswith("2. Workloads"):
                break
        started = {p.pid: p for p in psutil.Process(demo.pid).children(recursive=True)}
        assert len(started) >= len(APP_SERVICES)
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=30)
        assert demo.returncode == 130, err
        assert "every process the demo started is stopped" in err
        _, alive = psutil.wait_procs(list(started.values()), timeout=5)
        assert alive == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_keep_leaves_the_mesh_running_and_the_commands_it_prints_work() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "meshlib", "demo", "--quick", "--keep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )
    try:
        assert demo.stdout is not None
        printed: list[str] = []
        for line in demo.stdout:
            printed.append(line)
            if line.startswith("Ctrl-C here stops everything"):
                break
        text = "".join(printed)
        commands = text[text.index("In another terminal:") :].splitlines()[1:]
        shell = "\n".join(line.split("  #")[0] for line in commands if line.startswith("  "))
        # top runs until stopped, apply wants an edited file: the rest runs as printed
        shell = shell.replace("meshctl top", "true").replace("meshctl apply", "true")
        shell = shell.replace("meshctl ", f"{sys.executable} -m meshlib ")
        ran = subprocess.run(["bash", "-euc", shell], capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert ran.stdout.count("200 {") == 2, ran.stdout
        assert "spiffe://cluster.local/ns/default/sa/frontend" in ran.stdout  # meshctl status
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=30)
        assert demo.returncode == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
