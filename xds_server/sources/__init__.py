"""Where the mesh's configuration comes from: the file source and (later) Kubernetes watchers.

Every source turns Kubernetes manifests into model values with the same
`convert`, and reports what changed as `ChangeSet`s through an `emit` callback.
"""

from xds_server.sources.convert import SERVICE_NAME_LABEL, ManifestError, convert
from xds_server.sources.file import FileSource
from xds_server.sources.file_state import SourceError

__all__ = ["SERVICE_NAME_LABEL", "FileSource", "ManifestError", "SourceError", "convert"]
