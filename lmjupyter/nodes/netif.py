"""Addresses and interfaces of this host, standard library only (the agent and the server use it).

torch's gloo (and NCCL) pick the interface their ranks talk on from the hostname
unless told; on hosts that share a hostname (network namespaces, containers) or
have several interfaces that is the wrong one. lmjupyter names the interface that
holds the node's address in ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``, unless
the user set them.
"""
from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import subprocess

SIOCGIFADDR = 0x8915


def interface_of(address: str) -> str | None:
    """The name of the interface that holds ``address``, or None when none does (or it is unknown)."""
    try:
        wanted = ipaddress.ip_address(address)
    except ValueError:
        return None
    if wanted.version == 4:
        name = _ipv4_ioctl(str(wanted))
        if name:
            return name
    return _from_ip_command(wanted)


def _ipv4_ioctl(address: str) -> str | None:
    try:
        import fcntl
    except ImportError:  # not Linux
        return None
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        if socket.inet_ntoa(packed[20:24]) == address:
            return name
    return None


def _from_ip_command(wanted) -> str | None:
    """Secondary addresses and IPv6: ``ip -o addr`` lists every address of every interface."""
    ip = shutil.which("ip")
    if not ip:
        return None
    try:
        out = subprocess.run([ip, "-o", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("inet", "inet6"):
            try:
                if ipaddress.ip_interface(parts[3]).ip == wanted:
                    return parts[1].split("@")[0]
            except ValueError:
                continue
    return None


def address_towards(host: str, port: int = 9) -> str:
    """This host's address on the route to ``host`` (what the server sees an agent's packets come from)."""
    family = socket.AF_INET6 if ":" in host and not host.startswith("[") else socket.AF_INET
    info = socket.getaddrinfo(host.strip("[]"), port, family, socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as sock:
        sock.connect(info[4])  # UDP: no packet is sent, the kernel only picks the route
        return sock.getsockname()[0]


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now (torchrun's rendezvous store binds it a moment later)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def socket_env(address: str, base: dict) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME for a node whose ranks talk on ``address``,
    unless ``base`` (the environment) already names them."""
    name = interface_of(address)
    if not name:
        return {}
    return {key: name for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if not base.get(key)}
