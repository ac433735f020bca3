"""Run inside the `frontend` app container of the kind e2e test (`python - MODE ...`).

It is piped over `kubectl exec -i` by scripts/kind-e2e.sh and tests/test_kind_e2e.py, so it
uses the standard library only and prints one JSON document.

  requests N    GET http://backend:8080/ N times, as an app unaware of Envoy would; print
                each answer's pod (the sample app's hostname) and the `x-mesh-inbound`
                header the backend's sidecar stamped, plus how many requests this pod's
                own sidecar sent to the backend cluster meanwhile (from its admin stats).
  endpoints     print the backend endpoints this pod's sidecar load-balances over.
"""

from __future__ import annotations

import json
import sys
import urllib.request

ADMIN = "http://127.0.0.1:15000"
BACKEND_URL = "http://backend:8080/"
CLUSTER_PREFIX = "outbound|8080||backend."


def admin_json(path: str) -> dict:
    with urllib.request.urlopen(f"{ADMIN}{path}", timeout=5) as response:
        return json.load(response)


def backend_clusters() -> list[dict]:
    statuses = admin_json("/clusters?format=json").get("cluster_statuses", [])
    return [status for status in statuses if status["name"].startswith(CLUSTER_PREFIX)]


def sent_to_backend() -> int:
    stats = admin_json("/stats?format=json&filter=upstream_rq_total$").get("stats", [])
    return sum(
        int(stat.get("value", 0))
        for stat in stats
        if stat.get("name", "").startswith(f"cluster.{CLUSTER_PREFIX}")
    )


def requests(count: int) -> dict:
    before = sent_to_backend()
    answers = []
    for _ in range(count):
        with urllib.request.urlopen(BACKEND_URL, timeout=10) as response:
            body = json.load(response)
        headers = {key.lower(): value for key, value in body.get("headers", {}).items()}
        answers.append({"pod": body.get("hostname"), "via": headers.get("x-mesh-inbound")})
    return {"answers": answers, "sent_by_own_sidecar": sent_to_backend() - before}


def endpoints() -> dict:
    found = []
    for status in backend_clusters():
        for host in status.get("host_statuses", []):
            address = host["address"]["socket_address"]
            found.append(f"{address['address']}:{address['port_value']}")
    return {
        "clusters": [status["name"] for status in backend_clusters()],
        "endpoints": sorted(found),
    }


def main(argv: list[str]) -> None:
    if argv[:1] == ["requests"] and len(argv) == 2:
        result = requests(int(argv[1]))
    elif argv == ["endpoints"]:
        result = endpoints()
    else:
        raise SystemExit("usage: kind_probe.py requests N | endpoints")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
