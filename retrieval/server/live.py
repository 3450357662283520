"""A real uvicorn server on a loopback port, in a background thread: for tests, the load test and
the screenshot, which must talk HTTP to the same stack ``crossmodal serve`` runs."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


class LiveServer:
    """``with LiveServer(app) as server: httpx.get(server.url + "/health")``; port chosen by the OS."""

    def __init__(self, app: Any, host: str = "127.0.0.1", log_level: str = "warning", timeout: float = 60.0) -> None:
        self.app, self.host, self.log_level, self.timeout = app, host, log_level, timeout
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "LiveServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)  # not in the main thread: uvicorn installs no signal handlers
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                       name=f"uvicorn:{self.port}")
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server stopped during start-up (see its log above)")
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise TimeoutError(f"the server did not start within {self.timeout:.0f} s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
