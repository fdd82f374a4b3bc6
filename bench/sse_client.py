"""Many streamed completions at once from ONE thread (selectors over raw sockets), for load tests.

A thread per stream (http.client) costs the load generator about half a core at 16 streams on a
2-core machine: GIL hand-offs and a read call per line. Here that CPU would be taken from the server
being measured, more at 16 streams than at one, which biases "tokens/s over one stream" downwards.
This client reads whatever each socket has, decodes chunked transfer encoding and server-sent
events itself, and records when each event arrived. `cpu_share` in the result says how much of one
core it used, so a report can state it."""
import json
import selectors
import socket
import time
from urllib.parse import urlparse


class _Stream:
    def __init__(self, host, port, path, body):
        payload = json.dumps(body).encode()
        self.request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
        self.sock = socket.create_connection((host, port))
        self.start = time.perf_counter()
        self.raw = b""           # bytes not yet decoded
        self.headers = None      # None until the header block is in
        self.chunked = False
        self.lines = b""         # decoded body bytes not yet split into lines
        self.events = []         # (arrival time, parsed JSON) per `data:` event
        self.status = None

    def feed(self, data, now):
        self.raw += data
        if self.headers is None:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.raw[:end].decode("latin-1").split("\r\n")
            self.status = int(head[0].split()[1])
            self.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
            self.raw = self.raw[end + 4:]
        if self.chunked:
            while True:
                eol = self.raw.find(b"\r\n")
                if eol < 0:
                    break
                size = int(self.raw[:eol].split(b";")[0], 16)
                if len(self.raw) < eol + 2 + size + 2:
                    break
                self.lines += self.raw[eol + 2:eol + 2 + size]
                self.raw = self.raw[eol + 2 + size + 2:]
        else:
            self.lines += self.raw
            self.raw = b""
        *complete, self.lines = self.lines.split(b"\n")
        for line in complete:
            line = line.rstrip(b"\r")
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                self.events.append((now, json.loads(line[6:])))


def stream_all(url, bodies, path="/v1/completions", timeout=600):
    """POSTs every body (each with stream: true) at once and reads all the streams to their end.
    Returns ([(start time, [(arrival, event JSON), ...], HTTP status)] in the order of `bodies`, the
    share of one core this thread used while they ran)."""
    u = urlparse(url)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    streams = [_Stream(u.hostname, u.port, path, body) for body in bodies]
    selector = selectors.DefaultSelector()
    for s in streams:
        s.sock.sendall(s.request)  # blocking: a request is small
        s.sock.setblocking(False)
        selector.register(s.sock, selectors.EVENT_READ, s)
    open_count = len(streams)
    deadline = time.perf_counter() + timeout
    while open_count:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{open_count} stream(s) still open after {timeout} s")
        for key, _ in selector.select(timeout=1.0):
            s = key.data
            try:
                data = s.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if data:
                s.feed(data, time.perf_counter())
            else:
                selector.unregister(s.sock)
                s.sock.close()
                open_count -= 1
    selector.close()
    share = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    return [(s.start, s.events, s.status) for s in streams], share
