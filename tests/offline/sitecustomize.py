"""Tests stay offline: no name but loopback (and the test databases' hosts) is looked up,
and no socket connects past them (an address written out may be "looked up": that needs no
DNS). Installed in the test process (conftest.py) and, by being first on PYTHONPATH, in every
tasksync process a test starts (helpers.tasksync), so a test that reaches for the internet
fails at once and alike on every machine, instead of passing or failing with the network's
speed."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any

HOSTS = {
    "localhost",
    os.environ.get("TASKSYNC_TEST_PG_HOST", "127.0.0.1"),
    os.environ.get("TASKSYNC_TEST_MARIADB_HOST", "127.0.0.1"),
}


def allowed(host: object) -> bool:
    if host is None:  # a passive (bind) lookup
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name in HOSTS or name == "":
        return True
    try:
        ip = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified or str(ip) in HOSTS


def literal(host: object) -> bool:
    name = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def install() -> None:
    if getattr(socket, "_tasksync_offline", False):
        return
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not (allowed(host) or literal(host)):  # an address as text needs no lookup
            raise socket.gaierror(socket.EAI_NONAME, f"tests stay offline: {host!r} not looked up")
        return real_getaddrinfo(host, *args, **kwargs)

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not allowed(address[0]):
            raise OSError(errno.ENETUNREACH, f"tests stay offline: no connection to {address[0]}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket._tasksync_offline = True  # type: ignore[attr-defined]


install()
