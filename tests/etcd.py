"""A real etcd (Debian's etcd-server) on 127.0.0.1 for the tests of the etcd store.

``scripts/test`` installs etcd-server when it is missing; a test that needs etcd and does not
find it fails (it is never skipped)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import free_port


@contextmanager
def running_etcd(data_dir: Path, timeout: float = 20.0) -> Iterator[str]:
    """One etcd member on free ports of 127.0.0.1; yields its ``etcd://`` URL; stopped by pid."""
    binary = shutil.which("etcd")
    assert binary is not None, "etcd is not installed: scripts/test installs Debian's etcd-server"
    client, peer = free_port(), free_port()
    log = (data_dir.parent / f"{data_dir.name}.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            "--name=test",
            f"--data-dir={data_dir}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=test=http://127.0.0.1:{peer}",
            "--log-level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, (
                f"etcd exited: {(data_dir.parent / f'{data_dir.name}.log').read_text()}"
            )
            try:
                socket.create_connection(("127.0.0.1", client), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "etcd did not start listening"
                time.sleep(0.05)
        yield f"etcd://127.0.0.1:{client}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
