"""The admin HTTP app: health, readiness, and read-only views of the control plane."""

from xds_server.admin.app import AdminView, create_app
from xds_server.admin.views import ProxyView, SyncStatus

__all__ = ["AdminView", "ProxyView", "SyncStatus", "create_app"]
