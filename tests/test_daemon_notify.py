"""sd_notify over a real AF_UNIX datagram socket."""

import os
import socket

import pytest

from imalinkd.daemon.notify import SystemdNotifier


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_ready_status_watchdog_stopping_reach_the_socket(listener):
    path, sock = listener
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert n.ready(status="watching")
    lines = sock.recv(4096).decode().split("\n")
    assert "READY=1" in lines and "STATUS=watching" in lines and f"MAINPID={os.getpid()}" in lines
    n.status("importing EOS_DIGITAL\n(3 of 10)")
    assert sock.recv(4096) == b"STATUS=importing EOS_DIGITAL (3 of 10)"
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()


def test_abstract_socket_name():
    name = f"imalinkd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent():
    n = SystemdNotifier({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False


def test_missing_socket_does_not_raise(tmp_path):
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert n.ready() is False
    assert n.status("still fine") is False


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    assert SystemdNotifier({}).watchdog_interval() is None
    assert SystemdNotifier({"WATCHDOG_USEC": "junk"}).watchdog_interval() is None


def test_watchdog_pid_of_another_process_disables_pings():
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(env).watchdog_interval() is None
    env["WATCHDOG_PID"] = str(os.getpid())
    assert SystemdNotifier(env).watchdog_interval() == 1.0


def test_reloading_carries_a_monotonic_timestamp(listener):
    path, sock = listener
    SystemdNotifier({"NOTIFY_SOCKET": path}).reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert int(lines[1].split("=")[1]) > 0
