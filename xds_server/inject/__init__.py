"""Sidecar injection: the pure injection, the admission webhook, and their commands.

`inject` defines injection as a JSON Patch over a pod; `workloads` finds pod
templates in manifests; `sidecar` builds what is injected; `pod_bootstrap`
renders the sidecar's bootstrap inside the pod; `webhook`, `webhook_server`,
`certs` and `tls_store` serve the patch to the API server over HTTPS.
"""

from xds_server.inject.inject import (
    INJECT_KEY,
    STATUS_ANNOTATION,
    Decision,
    InjectionError,
    inject_pod,
    injection_patch,
)
from xds_server.inject.sidecar import InjectionConfig
from xds_server.inject.workloads import inject_object, inject_yaml

__all__ = [
    "INJECT_KEY",
    "STATUS_ANNOTATION",
    "Decision",
    "InjectionConfig",
    "InjectionError",
    "inject_object",
    "inject_pod",
    "inject_yaml",
    "injection_patch",
]
