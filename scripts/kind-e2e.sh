#!/usr/bin/env bash
# End-to-end on a local kind cluster: build the control-plane image, deploy the mesh from
# manifests/, deploy two sample apps into an injection-enabled namespace, and check that
#   1. the webhook injected the sidecar (init containers mesh-capture, mesh-bootstrap and
#      the native sidecar mesh-proxy);
#   2. a plain HTTP call from frontend to backend:8080 crosses both sidecars (the frontend
#      sidecar's stats count it; the answer carries x-mesh-inbound from the backend's);
#   3. scaling backend changes the endpoints the frontend's Envoy uses, both ways.
# The cluster is deleted at the end (KEEP_CLUSTER=1 keeps it; REUSE_CLUSTER=1 uses an
# existing one of the same name).  Before the mesh, the Gateway API's CRDs (HTTPRoute,
# GRPCRoute) are installed from the upstream release the project pins
# (GATEWAY_API_VERSION in xds_server/sources/convert_routes.py), standard channel by
# default; GATEWAY_API_CHANNEL=experimental installs the experimental channel, where
# that release keeps HTTPRoute's `retry`.
#
#   scripts/kind-e2e.sh                 # needs docker (with a running engine), kind, kubectl
#   CLUSTER_NAME=mine KEEP_CLUSTER=1 scripts/kind-e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_NAME="${CLUSTER_NAME:-xds-e2e}"
IMAGE="${IMAGE:-xds-server:0.1.0}"
ENVOY_IMAGE="${ENVOY_IMAGE:-envoyproxy/envoy:v1.40.0}"
NAMESPACE="${NAMESPACE:-mesh-demo}"
TIMEOUT="${TIMEOUT:-300s}"
CONTEXT="kind-${CLUSTER_NAME}"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-$(sed -n 's/^GATEWAY_API_VERSION = "\(.*\)"$/\1/p' xds_server/sources/convert_routes.py)}"
GATEWAY_API_CHANNEL="${GATEWAY_API_CHANNEL:-standard}"

say() { printf '\n== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "$CONTEXT" "$@"; }
probe() { k exec -i -n "$NAMESPACE" deploy/frontend -c app -- python - "$@" < scripts/kind_probe.py; }

for tool in docker kind kubectl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "docker cannot reach an engine (docker info failed)"

created=""
teardown() {
  status=$?
  if [ "$status" -ne 0 ] && [ -n "$created$REUSE_CLUSTER" ]; then
    say "diagnostics"
    k get pods -A -o wide || true
    k -n mesh-system logs deploy/mesh-injector --tail=50 || true
    k -n mesh-system logs deploy/xds-server --tail=50 || true
    k -n "$NAMESPACE" logs deploy/frontend -c mesh-proxy --tail=50 || true
  fi
  if [ -n "$created" ] && [ "${KEEP_CLUSTER:-}" != "1" ]; then
    say "deleting cluster $CLUSTER_NAME"
    kind delete cluster --name "$CLUSTER_NAME" || true
  fi
  exit "$status"
}
REUSE_CLUSTER="${REUSE_CLUSTER:-}"
trap teardown EXIT

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  [ "$REUSE_CLUSTER" = "1" ] || die "cluster $CLUSTER_NAME exists (REUSE_CLUSTER=1 to use it)"
  say "reusing cluster $CLUSTER_NAME"
else
  say "creating cluster $CLUSTER_NAME (1 control plane, 2 workers)"
  created="yes"
  kind create cluster --name "$CLUSTER_NAME" --config kind-cluster.yaml --wait 180s
fi

# Native sidecars (restartable init containers) need Kubernetes 1.29 or later.
minor="$(k version -o json | python3 -c 'import json,sys; print(int("".join(c for c in json.load(sys.stdin)["serverVersion"]["minor"] if c.isdigit())))')"
[ "$minor" -ge 29 ] || die "Kubernetes 1.$minor is too old: injection uses native sidecars (1.29+)"

say "building $IMAGE and loading images into the cluster"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"
if docker pull "$ENVOY_IMAGE"; then
  kind load docker-image "$ENVOY_IMAGE" --name "$CLUSTER_NAME"
fi

[ -n "$GATEWAY_API_VERSION" ] || die "no GATEWAY_API_VERSION in xds_server/sources/convert_routes.py"
say "installing the Gateway API $GATEWAY_API_VERSION CRDs ($GATEWAY_API_CHANNEL channel)"
# Server-side: the CRDs are too large for client-side apply's last-applied annotation.
k apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/${GATEWAY_API_CHANNEL}-install.yaml"
k wait --for condition=established --timeout=60s \
  crd/httproutes.gateway.networking.k8s.io crd/grpcroutes.gateway.networking.k8s.io

say "deploying the mesh (kubectl apply -k manifests/)"
k apply -k manifests/
k -n mesh-system rollout status deploy/xds-server --timeout="$TIMEOUT"
k -n mesh-system rollout status deploy/mesh-injector --timeout="$TIMEOUT"
ca="$(k get mutatingwebhookconfiguration mesh-sidecar-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')"
[ -n "$ca" ] || die "the injector did not patch the webhook's caBundle"

say "deploying the sample apps into $NAMESPACE (mesh-injection=enabled)"
k create namespace "$NAMESPACE" --dry-run=client -o yaml | k apply -f -
k label namespace "$NAMESPACE" mesh-injection=enabled --overwrite
k apply -n "$NAMESPACE" -f manifests/samples/demo.yaml
k -n "$NAMESPACE" rollout status deploy/backend --timeout="$TIMEOUT"
k -n "$NAMESPACE" rollout status deploy/frontend --timeout="$TIMEOUT"

say "1. injection"
init="$(k -n "$NAMESPACE" get pods -l app=backend -o jsonpath='{.items[0].spec.initContainers[*].name}')"
echo "backend init containers: $init"
[ "$init" = "mesh-capture mesh-bootstrap mesh-proxy" ] || die "unexpected init containers: $init"

say "2. frontend -> backend:8080 through both sidecars"
result=""
for _ in $(seq 30); do
  if result="$(probe requests 10 2>/dev/null)"; then break; fi
  sleep 2
done
[ -n "$result" ] || die "no answer from backend:8080"
echo "$result"
NAMESPACE="$NAMESPACE" python3 - "$result" <<'PY'
import json, os, sys
result = json.loads(sys.argv[1])
namespace = os.environ["NAMESPACE"]
for answer in result["answers"]:
    expected = f"{answer['pod']}.{namespace}"
    assert answer["via"] == expected, f"x-mesh-inbound {answer['via']!r}, expected {expected!r}"
assert result["sent_by_own_sidecar"] >= len(result["answers"]), result
print("ok: every answer crossed the frontend's sidecar and the answering pod's sidecar")
PY

backend_ips() { k -n "$NAMESPACE" get pods -l app=backend --field-selector=status.phase=Running \
  -o jsonpath='{range .items[*]}{.status.podIP}:8080{"\n"}{end}' | sort | paste -sd, -; }
envoy_endpoints() { probe endpoints | python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["endpoints"]))'; }
wait_endpoints() {
  want="$1"
  for _ in $(seq 60); do
    got="$(envoy_endpoints || true)"
    if [ "$got" = "$want" ]; then echo "frontend's Envoy uses: $got"; return 0; fi
    sleep 2
  done
  die "frontend's Envoy uses [$got], expected [$want]"
}

say "3. scaling backend changes the endpoints Envoy uses"
wait_endpoints "$(backend_ips)"
for replicas in 3 1; do
  k -n "$NAMESPACE" scale deploy/backend --replicas="$replicas"
  k -n "$NAMESPACE" rollout status deploy/backend --timeout="$TIMEOUT"
  for _ in $(seq 60); do
    [ "$(k -n "$NAMESPACE" get pods -l app=backend --no-headers | wc -l)" -eq "$replicas" ] && break
    sleep 2
  done
  wait_endpoints "$(backend_ips)"
  answered="$(probe requests 30 | python3 -c 'import json,sys; print(len({a["pod"] for a in json.load(sys.stdin)["answers"]}))')"
  echo "backend pods answering 30 requests: $answered (replicas: $replicas)"
  [ "$answered" -eq "$replicas" ] || die "$answered pods answered, expected $replicas"
done

say "PASS"
