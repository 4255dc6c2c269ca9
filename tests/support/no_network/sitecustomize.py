"""A machine without internet access, for the Python process that imports this at start-up.

Putting this folder on ``PYTHONPATH`` makes Python import it before anything else: names other
than localhost stop resolving and connections to anything but loopback fail at once, as on an
offline machine. The code under test (TFDS, TF Hub, rps' pre-flight) runs unchanged.
"""

import errno
import socket

_LOOPBACK = ("localhost", "127.0.0.1", "::1", "", None)
_getaddrinfo = socket.getaddrinfo
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _local(host) -> bool:
    return host in _LOOPBACK or str(host).startswith("127.")


def getaddrinfo(host, *args, **kwargs):
    if _local(host):
        return _getaddrinfo(host, *args, **kwargs)
    raise socket.gaierror(socket.EAI_NONAME, f"Name or service not known: {host} (no network)")


def connect(self, address):
    if self.family == socket.AF_UNIX or _local(address[0]):
        return _connect(self, address)
    raise OSError(errno.ENETUNREACH, "Network is unreachable (no network)")


def connect_ex(self, address):
    try:
        connect(self, address)
        return 0
    except OSError as err:
        return err.errno


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
