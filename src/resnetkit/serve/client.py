"""A small client for `resnetkit serve`, on the standard library only: a keep-alive HTTP connection,
multipart encoding, and `ServerProcess`, which starts `resnetkit serve` as a child process on a free
loopback port and waits until it is ready (the tests and benchmarks/serve_load.py use it).

>>> with ServerProcess(["--weights", "model.safetensors"]) as server:
...     reply = Client(server.url).post_files("/v1/predict?top_k=3", [("cat.jpg", data)])
...     reply.json()["results"][0]["predictions"]
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def multipart(files: list[tuple[str, bytes]], fields: dict | None = None) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request: one `file` part per (filename, bytes)."""
    boundary = uuid.uuid4().hex
    out = []
    for k, v in (fields or {}).items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for name, data in files:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Client:
    """One keep-alive connection to a server at `url` (http://HOST:PORT); not thread-safe: one per thread."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.token, self.timeout_s = u.hostname, u.port, token, timeout_s
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                headers: dict | None = None) -> Reply:
        h = dict(headers or {})
        if content_type:
            h["Content-Type"] = content_type
        if self.token:
            h.setdefault("Authorization", f"Bearer {self.token}")
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self.conn.request(method, path, body=body, headers=h)
                r = self.conn.getresponse()
                reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
                if reply.headers.get("connection", "").lower() == "close":
                    self.close()
                return reply
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if not reused or attempt:  # a fresh connection that fails is a real failure
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, **kw) -> Reply:
        return self.request("GET", path, **kw)

    def post_files(self, path: str, files: list[tuple[str, bytes]], fields: dict | None = None, **kw) -> Reply:
        body, ctype = multipart(files, fields)
        return self.request("POST", path, body, ctype, **kw)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class ServerProcess:
    """`resnetkit serve ARGS --port P` in a child process (P: a free port unless ARGS name one), ready
    on entering the context; SIGTERM on leaving. Its output is kept in memory (`log()`), never in a file."""

    def __init__(self, args: list[str], *, host: str = "127.0.0.1", env: dict | None = None,
                 cwd: str | os.PathLike | None = None, ready_timeout_s: float = 120.0, token: str | None = None):
        self.host, self.port = host, free_port(host)
        self.args = [*args, "--host", host, "--port", str(self.port)]
        self.env, self.cwd, self.ready_timeout_s, self.token = env, cwd, ready_timeout_s, token
        self.url = f"http://{host}:{self.port}"
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        """Launch and wait until /readyz says ready."""
        return self.launch().wait_ready()

    def launch(self) -> ServerProcess:
        """Start the process without waiting (several servers then load at once)."""
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "resnetkit", "serve", *self.args], env=env, cwd=self.cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def wait_ready(self) -> ServerProcess:
        deadline = time.monotonic() + self.ready_timeout_s
        client = Client(self.url, token=self.token, timeout_s=5)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"resnetkit serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if client.get("/readyz").status == 200:
                    client.close()
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"resnetkit serve was not ready within {self.ready_timeout_s:.0f} s:\n{self.log()}")

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait; the exit status (SIGKILL after `timeout_s`, giving -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
