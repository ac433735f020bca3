"""Inject the Envoy sidecar into Kubernetes manifests, like `istioctl kube-inject`.

Reads multi-document YAML (a file, or `-` for stdin) and writes the same
documents with every Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
ReplicationController, Job and CronJob pod template injected; other kinds pass
through.  Pods that opt out, use the host network or are already injected are
left as they are, with the reason on stderr.  Example:

    xds-server inject -f app.yaml | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from xds_server.inject.inject import InjectionError
from xds_server.inject.options import add_injection_arguments, config_from_args
from xds_server.inject.workloads import inject_yaml

logger = logging.getLogger(__name__)

HELP = "inject the Envoy sidecar into Kubernetes manifests (like istioctl kube-inject)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", required=True, help="manifest file to inject, or - for stdin"
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    add_injection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text("utf-8")
        injected, outcomes = inject_yaml(text, config)
    except (OSError, InjectionError, yaml.YAMLError, ValueError) as error:
        print(f"xds-server inject: {error}", file=sys.stderr)
        return 1
    for outcome in outcomes:
        if not outcome.decision.inject:
            print(
                f"xds-server inject: skipped {outcome.ref}: {outcome.decision.reason}",
                file=sys.stderr,
            )
    if args.output:
        args.output.write_text(injected, encoding="utf-8")
    else:
        sys.stdout.write(injected)
    return 0
