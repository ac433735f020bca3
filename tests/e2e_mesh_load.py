"""A bounded load through a client sidecar, in its own process (its own GIL).

    python e2e_mesh_load.py --seconds S --max-requests N
        [--http ADDRESS:PORT --host HOST] [--tcp ADDRESS:PORT] [--threads T]

prints `{"http": OK, "tcp": OK, "failures": [...], "seconds": S}` once S seconds
have passed or N requests were made, whichever comes first.

HTTP requests go to the sidecar's outbound HTTP listener over one kept-alive
connection per thread (the sidecar pools its connections to the destination).
Each TCP request is a new connection to the sidecar's outbound TCP listener, so
a new connection from it to the destination's sidecar: a full mutual TLS
handshake between the two, with the certificates they hold at that moment.  An
answer other than 200 from the sample app, a reset or a timeout is a failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time


class Budget:
    """Requests left, shared by the threads; False once spent or past the deadline."""

    def __init__(self, count: int, seconds: float) -> None:
        self.left = count
        self.deadline = time.monotonic() + seconds
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0 or time.monotonic() >= self.deadline:
                return False
            self.left -= 1
            return True


def http_worker(address: str, host: str, budget: Budget, outcome: dict[str, list[str]]) -> None:
    ip, port = address.rsplit(":", 1)
    connection: http.client.HTTPConnection | None = None
    while budget.take():
        try:
            if connection is None:
                connection = http.client.HTTPConnection(ip, int(port), timeout=5)
            connection.request("GET", "/", headers={"Host": host})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or b'"service"' not in body:
                raise OSError(f"HTTP {response.status} {body[:80]!r}")
            outcome["http"].append("")
        except (OSError, http.client.HTTPException) as error:
            outcome["failures"].append(f"{time.time():.3f} http {error!r}")
            if connection is not None:
                connection.close()
            connection = None


def tcp_exchange(address: str) -> None:
    """One connection: an HTTP request as bytes, the whole answer read (Content-Length)."""
    ip, port = address.rsplit(":", 1)
    with socket.create_connection((ip, int(port)), timeout=5) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data and (chunk := raw.recv(4096)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(f"answered {data[:80]!r}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length and (chunk := raw.recv(4096)):
            body += chunk
        if len(body) < length:
            raise OSError(f"closed after {len(body)} of {length} body bytes")


def tcp_worker(address: str, budget: Budget, outcome: dict[str, list[str]]) -> None:
    while budget.take():
        try:
            tcp_exchange(address)
            outcome["tcp"].append("")
        except (OSError, StopIteration, ValueError) as error:
            outcome["failures"].append(f"{time.time():.3f} tcp {error!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http")
    parser.add_argument("--host", default="")
    parser.add_argument("--tcp")
    parser.add_argument("--threads", type=int, default=2, help="per kind of load")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--max-requests", type=int, required=True)
    args = parser.parse_args()
    budget = Budget(args.max_requests, args.seconds)
    outcome: dict[str, list[str]] = {"http": [], "tcp": [], "failures": []}
    workers = []
    for _ in range(args.threads):
        if args.http:
            workers.append(
                threading.Thread(target=http_worker, args=(args.http, args.host, budget, outcome))
            )
        if args.tcp:
            workers.append(threading.Thread(target=tcp_worker, args=(args.tcp, budget, outcome)))
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(
        json.dumps(
            {
                "http": len(outcome["http"]),
                "tcp": len(outcome["tcp"]),
                "failures": outcome["failures"][:20],
                "failed": len(outcome["failures"]),
                "seconds": time.monotonic() - started,
            }
        )
    )


if __name__ == "__main__":
    main()
