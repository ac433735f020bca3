"""A service mesh control plane that drives stock Envoy sidecars over xDS."""

__version__ = "0.1.0"
