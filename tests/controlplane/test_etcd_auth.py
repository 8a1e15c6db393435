"""etcd's user/password authentication: a real etcd with auth enabled; replicas signed in as a
user that may use only meshlib's prefix share state; a token that lapsed is renewed; a wrong
password, a user without the prefix, or no user at all is refused with a clear error that never
shows the password; bad option values are refused naming the option."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aetcd import rpc  # type: ignore[import-untyped]

from meshlib.cli.main import main as meshctl
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.etcd_process import running_etcd
from meshlib.controlplane.etcd_store import EtcdAuth, EtcdStore, parse_etcd_url
from meshlib.controlplane.server import ConfigServer
from meshlib.errors import ConfigError, MeshError
from meshlib.policy.resources import ResourceKey
from tests.conftest import virtual_service
from tests.servers import wait_for

PASSWORD = "s3cret-Passw0rd"
TOKEN_TTL = 2  # seconds etcd keeps an unused auth token (--auth-token-ttl)


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def enable_auth(url: str) -> None:
    """Users as an operator sets them up: root, ``meshlib`` with read/write on /meshlib/ only,
    ``outsider`` with read/write on /other/ only; then auth on."""
    host, port = parse_etcd_url(url)[0]
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        auth = rpc.AuthStub(channel)
        for role, prefix in (("meshlib-rw", b"/meshlib/"), ("other-rw", b"/other/")):
            auth.RoleAdd(rpc.AuthRoleAddRequest(name=role), timeout=5)
            permission = rpc.Permission(
                permType=rpc.Permission.READWRITE, key=prefix, range_end=_prefix_end(prefix)
            )
            auth.RoleGrantPermission(
                rpc.AuthRoleGrantPermissionRequest(name=role, perm=permission), timeout=5
            )
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=5)
        for user, role in (("root", "root"), ("meshlib", "meshlib-rw"), ("outsider", "other-rw")):
            auth.UserAdd(rpc.AuthUserAddRequest(name=user, password=PASSWORD), timeout=5)
            auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=user, role=role), timeout=5)
        auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    with running_etcd(tmp_path / "etcd", extra_args=[f"--auth-token-ttl={TOKEN_TTL}"]) as (url, _):
        enable_auth(url)
        yield url


def test_replicas_signed_in_as_a_prefix_only_user_share_state(tmp_path: Path, etcd: str) -> None:
    auth = EtcdAuth("meshlib", PASSWORD)
    with (
        ConfigServer(tmp_path / "a", store_url=etcd, etcd_auth=auth) as a,
        ConfigServer(tmp_path / "b", store_url=etcd, etcd_auth=auth) as b,
        ControlPlaneClient(a.url, a.admin_token) as on_a,
        ControlPlaneClient(b.url, b.admin_token) as on_b,
    ):
        assert a.admin_token == b.admin_token  # settled through etcd
        version = on_a.apply([virtual_service()])["version"]
        assert wait_for(lambda: b.state is not None and b.state.version == version, 5)  # followed
        assert on_b.get(ResourceKey("VirtualService", "default", "reviews"))["metadata"]["name"] == "reviews"


def test_a_lapsed_token_is_renewed_and_the_request_repeated(
    tmp_path: Path, etcd: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = EtcdStore(parse_etcd_url(etcd), auth=EtcdAuth("meshlib", PASSWORD))
    try:
        assert store.load().version == 0
        store.put_token({"id": "t1", "created": 1.0})
        time.sleep(TOKEN_TTL + 1.5)  # unused for longer than etcd keeps the token
        with caplog.at_level(logging.INFO, logger="meshlib.controlplane.etcd"):
            store.put_token({"id": "t2", "created": 2.0})
            assert [t["id"] for t in store.load_tokens()] == ["t1", "t2"]
        renewed = [r.getMessage() for r in caplog.records if "authenticating again" in r.getMessage()]
        assert renewed, "etcd did not refuse the lapsed token: the renewal was not exercised"
        assert "invalid auth token" in renewed[0]
    finally:
        store.close()


def _load_once(etcd: str, auth: EtcdAuth | None) -> None:
    store = EtcdStore(parse_etcd_url(etcd), timeout=2.0, auth=auth)
    try:
        store.load()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("auth", "refusal"),
    [
        (
            EtcdAuth("meshlib", "wrong-password"),
            r"etcd 127\.0\.0\.1:\d+ refused --etcd-user meshlib: .*authentication failed",
        ),
        (EtcdAuth("nobody", PASSWORD), r"refused --etcd-user nobody: .*authentication failed"),
        (
            EtcdAuth("outsider", PASSWORD),
            r"etcd user outsider may not use the keys under /meshlib/ .*grant it a role",
        ),
        (None, r"etcd 127\.0\.0\.1:\d+ has authentication on: give --etcd-user NAME"),
    ],
    ids=["wrong password", "unknown user", "no permission on the prefix", "no user"],
)
def test_a_replica_etcd_does_not_let_in_is_refused_clearly(
    tmp_path: Path, etcd: str, auth: EtcdAuth | None, refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(MeshError, match=refusal) as refused:
        _load_once(etcd, auth)
    assert PASSWORD not in str(refused.value)
    assert PASSWORD not in caplog.text
    with pytest.raises(MeshError):  # and meshctl serve does not start over it either
        ConfigServer(tmp_path / "cs", store_url=etcd, etcd_auth=auth).start()


def test_bad_auth_options_are_refused_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ETCDCTL_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="--etcd-user: give the user name only"):
        EtcdAuth.from_options(f"meshlib:{PASSWORD}")
    with pytest.raises(ConfigError, match=r"--etcd-user meshlib: no password: give --etcd-password-file"):
        EtcdAuth.from_options("meshlib")
    with pytest.raises(ConfigError, match=r"--etcd-password-file .*missing: No such file"):
        EtcdAuth.from_options("meshlib", tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"--etcd-password-file .*empty: the file is empty"):
        EtcdAuth.from_options("meshlib", empty)
    written = tmp_path / "password"
    written.write_text(PASSWORD + "\n")
    assert EtcdAuth.from_options("meshlib", written) == EtcdAuth("meshlib", PASSWORD)
    monkeypatch.setenv("ETCDCTL_PASSWORD", PASSWORD)
    assert EtcdAuth.from_options("meshlib").password == PASSWORD
    assert PASSWORD not in repr(EtcdAuth("meshlib", PASSWORD))
    with pytest.raises(MeshError, match="a user or password in the etcd URL is not used") as in_url:
        parse_etcd_url(f"etcd://meshlib:{PASSWORD}@127.0.0.1:2379")
    assert PASSWORD not in str(in_url.value)
    serve = ["serve", "--data-dir", str(tmp_path / "cs"), "--port", "0"]
    assert meshctl([*serve, "--etcd-password-file", str(written), "--store", "etcd://127.0.0.1:1"]) != 0
    assert "--etcd-password-file needs --etcd-user NAME" in capsys.readouterr().err
    assert meshctl([*serve, "--etcd-user", "meshlib"]) != 0
    assert "need --store etcd://" in capsys.readouterr().err
