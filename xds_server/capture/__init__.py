"""Transparent capture: the iptables rules that route a pod's TCP through its sidecar.

`rules` turns a `CaptureConfig` into iptables rules (pure, tested as data),
`apply` installs or removes them in the current network namespace, and
`command` is `xds-server capture-init`, which the injected init container runs.
The sidecar's side of the contract, the listeners that receive the redirected
connections, is `xds_server.translate.capture`.
"""

from xds_server.capture.apply import CaptureError, install, uninstall
from xds_server.capture.rules import CaptureConfig, IPFamily, iptables_commands, restore_text, rules

__all__ = [
    "CaptureConfig",
    "CaptureError",
    "IPFamily",
    "install",
    "iptables_commands",
    "restore_text",
    "rules",
    "uninstall",
]
