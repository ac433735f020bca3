"""Wiring: source -> pipeline -> cache -> ADS server, plus the admin app; start-up and shutdown.

The only module that imports everything.  `ControlPlane.run()` has three phases:

* Start-up: everything that can make starting impossible is checked before
  anything is served (the source directory exists and is readable, both ports
  can be bound), and reported as one `StartupError` whose message is one line.
  That is the only way `run` fails.
* Serving: the pipeline loop, the source watcher and the admin HTTP server run
  in one TaskGroup, each under a `Supervisor` (`xds_server.supervise`), so an
  exception escaping one of them is logged and that task restarted, keeping its
  state; it never ends the others or the process.  A failing initial sync is
  recorded the same way and does not stop start-up.  ADS streams are already
  isolated from each other by the servicer.
* Shutdown (`shutdown()`, or cancelling `run`): readiness goes false, the gRPC
  server stops (GOAWAY to every connection, no new streams, the listening
  socket closed) and every open ADS stream is ended at once, so proxies
  reconnect (to another replica when there are several) instead of waiting
  out the grace period; the admin server stops; whatever is still running
  after `grace_seconds` is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from xds_server.admin import ProxyView, create_app
from xds_server.admin.auth import AdminToken, TokenError, load_or_create
from xds_server.admin.certificates import MeshCertificates
from xds_server.admin.client_status import client_status_service
from xds_server.admin.dependents import ObjectDependents, gather
from xds_server.admin.diff import DryRun
from xds_server.admin.xds_certificates import ClientCertificate
from xds_server.cache import Snapshot, SnapshotCache
from xds_server.history import PushDetail, PushHistory, PushSummary
from xds_server.model import ChangeSet, MeshSnapshot, ObjectKey
from xds_server.model.status import ObjectStatus, policy_conditions, rejections
from xds_server.pipeline import MeshPipeline, PipelineMetrics
from xds_server.security import CertificateIssuer, RootRotation
from xds_server.security.root_publisher import root_publisher
from xds_server.security.xds_auth import server_hosts, sign_client_certificate, xds_authentication
from xds_server.security.xds_tls import XdsServerTls
from xds_server.server import (
    AggregatedDiscoveryServer,
    ServerCallbacks,
    ServerLimits,
    ServerMetrics,
    bind_grpc_server,
)
from xds_server.settings import SOURCE_KUBERNETES, Settings, split_host_port
from xds_server.sources.file import FileSource
from xds_server.sources.metrics import SourceMetrics
from xds_server.sources.proposal import propose_apply, propose_files
from xds_server.supervise import Supervisor

if TYPE_CHECKING:
    from xds_server.ca import CertificateAuthority
    from xds_server.sources.k8s_status import Inputs as StatusInputs
    from xds_server.sources.k8s_status import StatusWriter

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The control plane cannot start; the message is one line naming what and why."""


class MeshSource(Protocol):
    """Where the mesh comes from: the file source or the Kubernetes source.

    `run` emits the whole mesh first, then sets `ready`, then emits every change
    until cancelled; `errors` are the problems in its input right now.
    """

    @property
    def errors(self) -> Sequence[object]: ...

    async def run(
        self, emit: Callable[[ChangeSet], None], ready: asyncio.Event | None = None
    ) -> None: ...


def create_source(settings: Settings, metrics: SourceMetrics | None = None) -> MeshSource:
    """`--source kubernetes` watches the API server; `--source file:DIR` a directory."""
    if settings.source_kind == SOURCE_KUBERNETES:
        from xds_server.sources.kubernetes import KubernetesSource  # the client loads slowly

        return KubernetesSource(settings.kubernetes, metrics=metrics)
    return FileSource(settings.source_directory, metrics=metrics)


def create_status_writer(settings: Settings, inputs: StatusInputs) -> StatusWriter | None:
    """In Kubernetes mode, the status write-back (`sources.k8s_status`); else None."""
    if settings.source_kind != SOURCE_KUBERNETES:
        return None
    from xds_server.sources.k8s_status import StatusSettings, StatusWriter
    from xds_server.sources.kubernetes import load_configuration

    kubeconfig = settings.kubernetes.kubeconfig
    return StatusWriter(
        inputs,
        StatusSettings.from_environment(),
        load_configuration=lambda: load_configuration(kubeconfig),
    )


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the CLI owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def _addresses(what: str, host: str, port: int) -> list[Any]:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {_reason(error)}") from None


def _bound_socket(what: str, family: int, address: Any) -> socket.socket:
    """A TCP socket bound to `address` (not listening yet); StartupError if it cannot be."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        host, port = address[0], address[1]
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise StartupError(f"cannot listen for {what} on {shown}: {_reason(error)}") from None
    return sock


def check_port_free(what: str, host: str, port: int) -> None:
    """StartupError if `host:port` is taken, whoever holds it.

    gRPC binds with SO_REUSEPORT, so a second control plane on the same port would
    silently share it with the first; a plain bind without it says the port is taken.
    """
    if port == 0:
        return
    for family, _, _, _, address in _addresses(what, host, port):
        _bound_socket(what, family, address).close()


def bind_admin_socket(host: str, port: int) -> socket.socket:
    """The admin server's socket, bound here so that a taken port is a clear StartupError."""
    family, _, _, _, address = _addresses("the admin API", host, port)[0]
    return _bound_socket("the admin API", family, address)


def _is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) is this host only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_source_directory(settings: Settings) -> None:
    """StartupError unless a `file:` source names a readable directory."""
    if settings.source_kind == SOURCE_KUBERNETES:
        return
    directory = settings.source_directory
    if not directory.exists():
        raise StartupError(f"source directory {directory} not found")
    if not directory.is_dir():
        raise StartupError(f"source {directory} is not a directory")
    try:
        with os.scandir(directory):
            pass
    except OSError as error:
        raise StartupError(f"cannot read source directory {directory}: {_reason(error)}") from None


class ControlPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        """The one metrics registry: /metrics serves it; whatever registers metrics gets it."""
        self.cache = SnapshotCache()
        self.pipeline = MeshPipeline(self.cache, settings.debounce, PipelineMetrics(self.registry))
        limits = ServerLimits(
            max_request_bytes=settings.xds_max_request_bytes,
            max_streams_per_peer=settings.xds_max_streams_per_peer,
            stuck_stream_seconds=settings.xds_stuck_stream_seconds,
        )
        self.callbacks: list[ServerCallbacks] = []
        """What hears the ADS protocol besides the server's metrics (push history, ...):
        append here, before `self.ads` is built."""
        self.history = PushHistory(self.registry)
        """Each generation from its source change to every proxy's ACK (`/api/pushes`)."""
        self.callbacks.append(self.history)
        self.pipeline.builder.on_generation = self.history.generation_committed
        authenticator, authorizer = xds_authentication(settings, lambda: self.pipeline.builder.mesh)
        self.ads = AggregatedDiscoveryServer(
            self.cache,
            observer=self.pipeline,
            limits=limits,
            metrics=ServerMetrics(self.registry),
            callbacks=self.callbacks,
            authenticator=authenticator,
            authorizer=authorizer,
        )
        self.xds_tls: XdsServerTls | None = None
        """The xDS port's certificate (None with `--insecure-xds`)."""
        self.source: MeshSource = create_source(settings, SourceMetrics(self.registry))
        self._issuer: CertificateIssuer | None = None
        self.status_writer = create_status_writer(settings, self._status_inputs)
        """Kubernetes mode: writes route and policy status while holding the Lease."""
        self.supervisor = Supervisor(settings.supervision)
        self.xds_serving = False
        self.listening = asyncio.Event()
        """Both ports are bound (`xds_port`, `admin_port` known); the mesh may not be synced."""
        self.started = asyncio.Event()
        """Listening, and the source's initial sync has been applied."""
        self.xds_port = 0
        self.admin_port = 0
        self._stop = asyncio.Event()
        self._admin_server: _QuietUvicorn | None = None
        self._admin_socket: socket.socket | None = None
        self.admin_token: AdminToken | None = None
        """What the admin's state-changing endpoints require (read or made at start-up)."""

    # -- AdminView ---------------------------------------------------------
    def is_ready(self) -> bool:
        return self.xds_serving and self.pipeline.ready

    def readiness_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "xds_serving": self.xds_serving,
            "sources_synced": self.pipeline.ready,
            "source": self.settings.source,
        }
        failures = self.supervisor.status()
        if failures:
            detail["failures"] = failures
        return detail

    def proxies(self) -> list[ProxyView]:
        builder = self.pipeline.builder
        known = builder.proxies
        return [
            ProxyView(
                stream=stream,
                proxy=known.get(stream.node_id),
                snapshot_error=builder.proxy_error(stream.node_id),
                metadata_error=self.pipeline.node_errors.get(stream.node_id),
            )
            for stream in self.ads.streams()
        ]

    def snapshot(self, node_id: str) -> Snapshot | None:
        return self.cache.get_snapshot(node_id)

    def source_errors(self) -> list[str]:
        return [str(error) for error in self.source.errors]

    def translation_errors(self) -> list[tuple[str, str]]:
        """Objects left out because translating them raised: (object, error)."""
        return self.pipeline.translation_errors()

    def rejected_objects(self) -> dict[ObjectKey, str]:
        """Routes and policies the source or the pipeline rejected now, and why."""
        pipeline = self.pipeline
        errors = [*pipeline.builder.object_errors.items(), *pipeline.batch_errors.items()]
        return rejections(self.source.errors, errors)

    def _status_inputs(
        self,
    ) -> tuple[MeshSnapshot, dict[ObjectKey, str], dict[ObjectKey, tuple[str, ...]]]:
        """What route and policy status is computed from: the mesh, the rejections, and
        the rules translation left out of routes."""
        builder = self.pipeline.builder
        return builder.mesh, self.rejected_objects(), builder.route_issues()

    def policy_statuses(self) -> list[ObjectStatus]:
        """Every route and policy with its status conditions (`/api/policies`)."""
        statuses = policy_conditions(*self._status_inputs())
        return [statuses[key] for key in sorted(statuses, key=lambda k: (k.kind.value, *k[1:]))]

    async def preview(self, files: Mapping[str, bytes]) -> DryRun:
        """What writing `files` into the watched directory (or `kubectl apply` of them)
        would change, translated on a copy of the state; nothing is committed.

        The files are parsed in a thread against the source's state of now (a
        frozen value); the builder's preview runs here, on the event loop that
        applies batches, so it sees one consistent moment.  ValueError for a
        file name that cannot be one.
        """
        if isinstance(self.source, FileSource):
            source = self.source
            proposal = await asyncio.to_thread(propose_files, source.state, source.directory, files)
        else:
            proposal = await asyncio.to_thread(propose_apply, files)
        builder = self.pipeline.builder
        preview = builder.preview(proposal.changes)
        return DryRun(proposal.changes, proposal.errors, preview, len(builder.proxies))

    def dependents(self, key: ObjectKey) -> ObjectDependents:
        """What `key` feeds, from the dependency index, and which proxies hold it
        (`xds-server affected`); read on the loop that applies batches."""
        return gather(key, self.pipeline.builder, self.cache.get_snapshot)

    def mesh_certificates(self) -> MeshCertificates:
        """Every identity's certificate and the trust roots (`/api/certificates`)."""
        mesh = self.pipeline.builder.mesh
        return MeshCertificates(tuple(mesh.workload_certificates.values()), mesh.roots)

    def pushes(self) -> list[PushSummary]:
        return self.history.pushes()

    def push(self, generation: int) -> PushDetail | None:
        return self.history.push(generation)

    def metrics(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- lifecycle ---------------------------------------------------------
    def shutdown(self) -> None:
        """Ask `run()` to shut down gracefully and return (safe to call more than once)."""
        self._stop.set()

    def _on_source_changes(self, changes: ChangeSet) -> None:
        if self.pipeline.ready:
            self.pipeline.submit(changes)
            return
        try:
            self.pipeline.initial_sync(changes)
        except Exception as error:
            # Staying unready for good would help no one: serve what could be built,
            # and say so in /readyz and the log.
            self.supervisor.failed("initial sync", error)
            try:
                self.pipeline.builder.mark_synced()
            except Exception as again:
                self.supervisor.failed("initial sync", again)

    async def run(self) -> None:
        """Serve until `shutdown()` (returns) or cancellation (re-raised), then drain.

        Raises `StartupError` if the control plane cannot start; nothing is served then.
        """
        if self.settings.source_kind == SOURCE_KUBERNETES:
            await asyncio.to_thread(self.load_issuer)  # the Secret's API calls: off the loop
        grpc_server = self._start_up()
        await grpc_server.start()
        self.xds_serving = True
        xds_host = split_host_port(self.settings.xds_listen)[0]
        logger.info("xDS (ADS) listening on %s:%d", xds_host, self.xds_port)
        source_ready = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tasks:
                run = self.supervisor.run

                def watch_source() -> Awaitable[None]:
                    return self.source.run(self._on_source_changes, source_ready)

                workers = [
                    tasks.create_task(run("pipeline", self.pipeline.run), name="pipeline"),
                    tasks.create_task(run("source", watch_source), name="source"),
                    tasks.create_task(run("certificates", self._run_issuer), name="certificates"),
                ]
                publish = root_publisher(self)  # Kubernetes: the trust bundle per namespace
                if publish is not None:
                    workers.append(tasks.create_task(run("roots", publish), name="roots"))
                if self.status_writer is not None:
                    writer = self.status_writer.run
                    workers.append(tasks.create_task(run("status", writer), name="status"))
                admin = tasks.create_task(run("admin", self._serve_admin), name="admin")
                try:
                    while not (self._admin_server and self._admin_server.started):  # noqa: ASYNC110 - uvicorn exposes only a flag
                        await asyncio.sleep(0.01)
                    admin_host = split_host_port(self.settings.admin_listen)[0]
                    logger.info("admin listening on http://%s:%d", admin_host, self.admin_port)
                    if not _is_loopback(admin_host):
                        logger.warning(
                            "the admin API listens beyond this host (%s): its read-only views "
                            "are open to whoever reaches it; state changes need the token",
                            admin_host,
                        )
                    self.listening.set()
                    await source_ready.wait()  # /readyz says false until then
                    self.started.set()
                    await self._stop.wait()
                finally:
                    await self._drain(grpc_server, admin)
                for worker in workers:
                    worker.cancel()
        finally:
            self.xds_serving = False
            self.supervisor.stopping = True
            await grpc_server.stop(0)  # a no-op after a drain; cuts everything otherwise

    # -- certificates ------------------------------------------------------
    def load_issuer(self) -> CertificateIssuer:
        """The certificate issuer, its CA loaded (or generated) on first use; StartupError
        naming the CA if it cannot be.  `run` loads it before binding anything."""
        if self._issuer is None:
            from xds_server.security.setup import create_issuer

            try:
                issuer = create_issuer(self.settings)
            except Exception as error:  # ValueError, OSError, the client's ApiException
                raise StartupError(f"cannot load the CA: {error}") from None
            self._issuer = issuer
            builder = self.pipeline.builder
            builder.on_identities = issuer.identities_changed
            issuer.identities_changed(builder.identities)
        return self._issuer

    @property
    def issuer(self) -> CertificateIssuer:
        return self.load_issuer()

    @property
    def ca(self) -> CertificateAuthority:
        """The CA issuing now (xDS server and client certificates are issued with it too)."""
        return self.load_issuer().ca

    async def rotate_root(self, overlap_seconds: float) -> RootRotation:
        """Start a root rotation (the admin endpoint): old and new root trusted at once,
        every certificate re-issued under the new one shortly after, the old root dropped
        after `overlap_seconds`.  ValueError when it cannot start (the reason)."""
        return await self.load_issuer().rotate_root(overlap_seconds)

    async def _run_issuer(self) -> None:
        await self.load_issuer().run(self.pipeline.submit)

    def _start_up(self) -> grpc.aio.Server:
        """Check and bind everything, or raise StartupError having bound nothing."""
        try:
            xds_host, xds_port = split_host_port(self.settings.xds_listen)
            admin_host, admin_port = split_host_port(self.settings.admin_listen)
        except ValueError as error:
            raise StartupError(str(error)) from None
        check_source_directory(self.settings)
        try:
            self.admin_token = load_or_create(self.settings.security.admin_token_file)
        except TokenError as error:
            raise StartupError(str(error)) from None
        admin_socket = bind_admin_socket(admin_host, admin_port)
        try:
            check_port_free("xDS", xds_host, xds_port)
            self.load_issuer()  # after the ports: a taken port is said before any CA is made
            credentials = self._xds_credentials(xds_host)
            try:
                grpc_server, self.xds_port = bind_grpc_server(
                    self.ads, f"{xds_host}:{xds_port}", credentials=credentials,
                    services=[client_status_service(self)],
                )  # fmt: skip
            except (RuntimeError, OSError):
                raise StartupError(f"cannot listen for xDS on {self.settings.xds_listen}") from None
        except BaseException:
            admin_socket.close()
            raise
        self._admin_socket = admin_socket
        self.admin_port = admin_socket.getsockname()[1]
        return grpc_server

    def _xds_credentials(self, xds_host: str) -> grpc.ServerCredentials | None:
        """TLS for the xDS port, or None (and a loud warning) with `--insecure-xds`."""
        security = self.settings.security
        if security.insecure_xds:
            logger.warning(
                "INSECURE: --insecure-xds serves xDS in PLAINTEXT and authenticates no proxy: "
                "anyone who reaches %s can claim any node and read its config and "
                "certificates. For development only.",
                self.settings.xds_listen,
            )
            return None
        issuer = self.load_issuer()
        self.xds_tls = XdsServerTls(
            lambda: issuer.ca,
            lambda: issuer.bundle,
            security.ca_namespace,
            hosts=server_hosts(xds_host, security.ca_namespace),
            require_client_auth=security.client_auth(self.settings.source_kind) == "certificate",
        )
        logger.info("xDS serves TLS as %s", self.xds_tls.current.spiffe_id)
        return self.xds_tls.credentials()

    def sign_xds_client_certificate(
        self, namespace: str, service_account: str, csr_pem: bytes, ttl_seconds: float
    ) -> ClientCertificate:
        """A sidecar's xDS credential for `namespace`/`service_account` on its CSR."""
        return sign_client_certificate(
            self.load_issuer(), self.settings.security, namespace, service_account, csr_pem,
            ttl_seconds,
        )  # fmt: skip

    async def _serve_admin(self) -> None:
        """One run of the admin HTTP server on its socket (bound again after a restart)."""
        sock = self._admin_socket
        if sock is None or sock.fileno() == -1:
            host = split_host_port(self.settings.admin_listen)[0]
            sock = self._admin_socket = bind_admin_socket(host, self.admin_port)
        assert self.admin_token is not None  # read by _start_up
        config = uvicorn.Config(
            create_app(self, self.admin_token),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(self.settings.grace_seconds)),
        )
        server = self._admin_server = _QuietUvicorn(config)
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exit:  # uvicorn's answer to a failed start-up
            raise RuntimeError(f"the admin server exited with {exit.code}") from None
        finally:
            sock.close()

    async def _drain(self, grpc_server: grpc.aio.Server, admin: asyncio.Task[None]) -> None:
        """Graceful shutdown within `grace_seconds` (see the module docstring)."""
        grace = self.settings.grace_seconds
        streams = len(self.ads.streams())
        logger.info("shutting down: ending %d xDS stream(s), grace %.1f s", streams, grace)
        self.xds_serving = False
        self.supervisor.stopping = True
        stopping = asyncio.ensure_future(grpc_server.stop(grace))
        await asyncio.sleep(0)  # GOAWAY sent and the port closed before the streams end
        self.ads.close()
        if self._admin_server is not None:
            self._admin_server.should_exit = True
        _, pending = await asyncio.wait({stopping, admin}, timeout=grace)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await stopping
        logger.info("shut down")
