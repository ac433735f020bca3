"""The project's own policy API: classes generated from `protos/` (do not edit them).

`backend_policy_pb2` (with its `.pyi` stub) is written by `scripts/gen_policy_api.py`
from `protos/xds_server/policy/v1alpha1/backend_policy.proto`, the same source the
BackendPolicy CRD in `manifests/crds/` is generated from; `tests/test_policy_api.py` fails
when either is stale.  At run time only `protobuf` is needed; protoc (`grpcio-tools`) is a
test-time dependency.  This package imports nothing else of the project.
"""
