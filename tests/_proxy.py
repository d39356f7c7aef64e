"""A TCP proxy on loopback that injects network faults between a device and a real server (tests only).

Per connection it applies the fault `schedule(n)` returns for the n-th connection: 'pass' (forward both ways),
'delay' (hold the reply `delay_s` before forwarding it), 'reset' (read the request, then close without a
reply), 'truncate' (forward only the first `keep` bytes of the reply, then close).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], schedule: Callable[[int], str], delay_s: float = 3.0, keep: int = 40) -> None:
        self.upstream, self.schedule, self.delay_s, self.keep = upstream, schedule, delay_s, keep
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.faults: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.listener.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            fault = self.schedule(n)
            self.faults.append(fault)
            n += 1
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault: str) -> None:
        with client, socket.create_connection(self.upstream) as server:
            if fault == "reset":
                client.recv(65536)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
                return
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            self._pipe(server, client, fault)

    def _pipe(self, src: socket.socket, dst: socket.socket, fault: str | None) -> None:
        sent, delayed = 0, False
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                if fault == "delay" and not delayed:
                    time.sleep(self.delay_s)
                    delayed = True
                if fault == "truncate":
                    data = data[: max(0, self.keep - sent)]
                    if not data:
                        return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            return
        finally:
            if fault is not None:  # the reply direction ends: close both so the client sees the cut
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
