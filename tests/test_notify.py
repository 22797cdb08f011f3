"""sd_notify against real unix datagram sockets (path and abstract), as systemd sets them up."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfs.host.notify import child_environment, notify, notify_address


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        yield server


def test_ready_arrives_as_one_datagram(path_socket: socket.socket) -> None:
    assert notify("READY=1", "STATUS=serving")
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=serving"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"modelfs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1")
        assert server.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify("READY=1")


def test_a_vanished_manager_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert not notify("READY=1")


def test_unsupported_address_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify_address("vsock:2:1234") is None
    assert not notify("READY=1")


def test_children_do_not_inherit_the_socket() -> None:
    env = child_environment({"NOTIFY_SOCKET": "/run/x", "PATH": "/bin"})
    assert env == {"PATH": "/bin"}
