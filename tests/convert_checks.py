"""Manifests read as the file source reads them, and the check of one `convert` refusal.

The conversion specifications (`test_convert*.py`) each feed `convert` a
document and, for a bad one, expect a `ManifestError` naming the object and
the field; this module is the one place that says how both are done.
"""

from __future__ import annotations

from typing import Any

import pytest

from xds_server.model import ObjectKey
from xds_server.sources.convert import ManifestError, convert
from xds_server.sources.yaml_reader import Document, read_documents


def manifest(text: str) -> Any:
    """One document read as the file source reads it (Kubernetes' YAML semantics)."""
    (document,) = read_documents(text)
    assert isinstance(document, Document), document
    return document.value


def refusal(raw: Any, key: ObjectKey, field: str, message: str) -> ManifestError:
    """`convert(raw)` refuses it: the error names the object `key`, the `field`, and says
    `message` (among its words).  Returned for any further check."""
    with pytest.raises(ManifestError) as caught:
        convert(raw)
    error = caught.value
    shown = f"{key.kind.value} {key.namespace}/{key.name}"
    assert (error.object_ref, error.field) == (shown, field), str(error)
    assert message in error.message, str(error)
    assert error.key == key
    return error
