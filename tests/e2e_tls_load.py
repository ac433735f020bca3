"""A bounded HTTPS load in its own process (its own GIL): `python e2e_tls_load.py PORT
ROOTS_FILE SECONDS THREADS` prints `{"ok": N, "failures": [...], "seconds": S}`.

Each request is a new connection (a full handshake) that verifies the server's chain
against the roots in ROOTS_FILE as of that request (the test keeps the file at the
control plane's published bundle), sends a GET and reads the answer.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

ANSWER = b"tls-ok"


def main() -> None:
    port, roots_file, seconds, threads = (
        int(sys.argv[1]),
        Path(sys.argv[2]),
        float(sys.argv[3]),
        int(sys.argv[4]),
    )
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    ok = [0]
    failures: list[str] = []

    def run() -> None:
        contexts: dict[bytes, ssl.SSLContext] = {}
        while time.monotonic() < deadline:
            roots = roots_file.read_bytes()
            if (context := contexts.get(roots)) is None:
                context = contexts[roots] = ssl.create_default_context(cadata=roots.decode())
                context.check_hostname = False  # SVIDs name a SPIFFE ID, not a host
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                    context.wrap_socket(raw) as tls,
                ):
                    # Else Nagle holds the request behind the handshake's last flight.
                    tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                    data = b""
                    while not data.endswith(ANSWER) and (chunk := tls.recv(4096)):
                        data += chunk  # (not waiting for Envoy's delayed close)
                if not (data.startswith(b"HTTP/1.1 200") and data.endswith(ANSWER)):
                    raise OSError(f"answered {data[:80]!r}")
                with lock:
                    ok[0] += 1
            except (OSError, ssl.SSLError) as error:
                with lock:
                    failures.append(f"{time.time():.3f} {error}")

    started = time.monotonic()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    print(json.dumps({"ok": ok[0], "failures": failures[:20], "seconds": elapsed}))


if __name__ == "__main__":
    main()
