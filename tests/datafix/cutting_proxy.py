"""A TCP proxy in front of a MongoDB server that plays a server lost at a chosen command.

Killing the real server mid-run leaves to chance which command is in flight when it dies.
:class:`CuttingProxy` forwards bytes both ways and, when the client sends the ``nth``
command named ``cut_on`` (e.g. the third ``update``), drops every connection without
forwarding it and stops listening, as a killed server would: the in-flight command fails
with a closed connection and reconnecting is refused.
"""

from __future__ import annotations

import socket
import struct
import threading

OP_MSG = 2013
_HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        try:
            chunk = sock.recv(n)
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def command_name(op_msg_body: bytes) -> str | None:
    """The command an OP_MSG body carries: the first key of its kind-0 section's document.

    The body is flagBits (4 bytes), the section kind (1 byte), then the BSON document:
    its size (4 bytes), the first element's type (1 byte) and its name, a C string.
    """
    if len(op_msg_body) < 11 or op_msg_body[4] != 0:
        return None
    end = op_msg_body.find(b"\0", 10)
    return op_msg_body[10:end].decode() if end > 0 else None


def _drop(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class CuttingProxy:
    """Listen on 127.0.0.1 (see :attr:`url`), forward to ``upstream``, cut as described above."""

    def __init__(self, upstream: tuple[str, int], *, cut_on: str, nth: int) -> None:
        self._upstream = upstream
        self._cut_on = cut_on
        self._nth = nth
        self._seen = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"mongodb://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()

    def close(self) -> None:
        """Drop every connection and stop listening (also what the cut does)."""
        with self._lock:
            self.cut.set()
            socks, self._sockets = self._sockets, []
        try:
            # Wakes the accept() blocked in the other thread; close() alone may not.
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        _drop(*socks)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                _drop(client)
                continue
            with self._lock:
                if self.cut.is_set():
                    _drop(client, upstream)
                    continue
                self._sockets += [client, upstream]
            for target, args in (
                (self._requests, (client, upstream)),
                (self._replies, (upstream, client)),
            ):
                threading.Thread(target=target, args=args, daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward whole messages, so that the cut falls before a command, never inside one."""
        while True:
            header = _recv_exactly(client, _HEADER.size)
            if header is None:
                break
            length, _, _, opcode = _HEADER.unpack(header)
            body = _recv_exactly(client, length - _HEADER.size)
            if body is None:
                break
            if opcode == OP_MSG and command_name(body) == self._cut_on:
                with self._lock:
                    self._seen += 1
                    cut_now = self._seen >= self._nth
                if cut_now:
                    self.close()
                    return
            try:
                upstream.sendall(header + body)
            except OSError:
                break
        _drop(client, upstream)

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
        while True:
            try:
                data = upstream.recv(65536)
                if not data:
                    break
                client.sendall(data)
            except OSError:
                break
        _drop(upstream, client)
