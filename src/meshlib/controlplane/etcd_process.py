"""One local etcd member (Debian's ``etcd-server`` binary) on free ports of 127.0.0.1: for the
tests, the benchmarks and demos of replicas sharing an etcd store. Not for production etcd."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .._net import free_port
from ..errors import MeshError

__all__ = ["running_etcd"]


@contextmanager
def running_etcd(
    data_dir: Path,
    timeout: float = 20.0,
    tls: tuple[Path, Path, Path] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start etcd over ``data_dir``; yield its ``etcd://`` URL and process; stop it by pid.
    With ``tls`` (certificate, key, client CA bundle) it serves clients over TLS only and lets
    in only those with a client certificate of that CA (``--client-cert-auth``). ``extra_args``
    go to etcd as they are (e.g. ``--auth-token-ttl=2``)."""
    binary = shutil.which("etcd")
    if binary is None:
        raise MeshError("etcd is not installed (Debian: apt-get install etcd-server)")
    client, peer = free_port(), free_port()
    scheme = "https" if tls is not None else "http"
    secure = (
        [f"--cert-file={tls[0]}", f"--key-file={tls[1]}", f"--trusted-ca-file={tls[2]}", "--client-cert-auth"]
        if tls is not None
        else []
    )
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - the etcd found on PATH, fixed arguments
            [
                binary,
                "--name=local",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={scheme}://127.0.0.1:{client}",
                f"--advertise-client-urls={scheme}://127.0.0.1:{client}",
                *secure,
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=local=http://127.0.0.1:{peer}",
                "--log-level=warn",
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise MeshError(f"etcd exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", client), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    message = f"etcd did not listen on 127.0.0.1:{client} within {timeout:g}s"
                    raise MeshError(message) from None
                time.sleep(0.05)
        yield f"etcd://127.0.0.1:{client}", process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
