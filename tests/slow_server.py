"""A real HTTP server that never finishes its answer, for tests of total deadlines."""

from __future__ import annotations

import socket
import threading
import time


class Trickler:
    """A server that answers one header byte at a time, forever: each read is quick, the whole never ends."""

    def __init__(self, pause_s: float = 0.05):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/x"
        self.pause_s = pause_s
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stop.is_set():
                    conn.sendall(b"a")
                    time.sleep(self.pause_s)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
