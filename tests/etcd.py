"""A real etcd (Debian's etcd-server) on 127.0.0.1 for the tests of the etcd store.

``scripts/test`` installs etcd-server when it is missing; a test that needs etcd and does not
find it fails (it is never skipped)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meshlib.controlplane.etcd_process import running_etcd as _running


@contextmanager
def running_etcd(data_dir: Path) -> Iterator[str]:
    """One etcd member on free ports of 127.0.0.1; yields its ``etcd://`` URL."""
    with _running(data_dir) as (url, _):
        yield url
