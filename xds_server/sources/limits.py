"""The bounds every manifest must stay within, taken from Kubernetes' own where it has one.

One table so the file source, the YAML reader, validation and the fuzz tests
agree on what "too big" means.  Kubernetes stores an object in etcd only up to
1.5 MiB and caps an EndpointSlice at 1,000 endpoints and 100 ports; names and
label values have their documented lengths.  A file may hold many objects, so
its cap is larger than one object's, and it is checked before the file is read.
"""

from __future__ import annotations

MAX_FILE_BYTES = 16 * 1024 * 1024
"""A manifest file larger than this is rejected from its size alone, unread."""
MAX_DOCUMENT_BYTES = 1_572_864
"""One YAML document (one object), as etcd's default request limit (1.5 MiB)."""
MAX_DOCUMENTS_PER_FILE = 10_000
MAX_YAML_DEPTH = 64
"""Nesting of mappings and sequences; Kubernetes objects need well under 20."""
MAX_ALIAS_EXPANSION = 250_000
"""Nodes a document may expand to once YAML aliases are followed (alias bombs)."""
MAX_INTEGER_DIGITS = 20
"""Longer integer literals cannot be an int64 and are rejected before conversion."""

MAX_NAME_LENGTH = 253
MAX_LABEL_NAME_LENGTH = 63
MAX_LABEL_PREFIX_LENGTH = 253
MAX_LABEL_VALUE_LENGTH = 63
MAX_ANNOTATIONS_BYTES = 256 * 1024
MAX_ENDPOINTS_PER_SLICE = 1000
MAX_ADDRESSES_PER_ENDPOINT = 100
MAX_PORTS_PER_SLICE = 100
MAX_SERVICE_PORTS = 1000
MAX_STRING_LENGTH = 4096
"""Any other string field the mesh reads (zone, hostname, nodeName, appProtocol...)."""

MAX_SHOWN_VALUE_CHARS = 80
"""A value quoted in an error message is cut to this many characters, with an ellipsis."""
MAX_FIELD_CHARS = 240
"""A field path in an error (`metadata.labels[...]`) is cut to this many characters."""
MAX_ERROR_CHARS = 1000
"""No error message, in the admin API or the log, is longer than this."""


def clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to `limit` characters, with an ellipsis when anything was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
