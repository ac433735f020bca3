"""The admin HTTP app: health, readiness, and read-only views of the control plane."""

from xds_server.admin.app import AdminView, create_app

__all__ = ["AdminView", "create_app"]
