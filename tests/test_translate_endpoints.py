"""Spec: EndpointSlices in, ClusterLoadAssignments out."""

from __future__ import annotations

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from translate_builders import endpoint, endpoint_slice, grpc, http, service, tcp

from xds_server.model import Endpoint, EndpointPort, EndpointSlice, ServicePort
from xds_server.translate import cluster_name, load_assignments_for_service

WEB = service("web", http(80, target=8080))


def hosts(cla: endpoint_pb2.ClusterLoadAssignment) -> list[tuple[str, str, int]]:
    """(zone, address, port) in the order Envoy receives them."""
    return [
        (
            locality.locality.zone,
            lb.endpoint.address.socket_address.address,
            lb.endpoint.address.socket_address.port_value,
        )
        for locality in cla.endpoints
        for lb in locality.lb_endpoints
    ]


def only(
    assignments: list[endpoint_pb2.ClusterLoadAssignment],
) -> endpoint_pb2.ClusterLoadAssignment:
    (cla,) = assignments
    return cla


@pytest.mark.parametrize(
    ("state", "routable"),
    [
        (endpoint("127.0.0.10"), True),
        (endpoint("127.0.0.10", ready=False), False),
        (endpoint("127.0.0.10", terminating=True), False),
        (endpoint("127.0.0.10", ready=True, terminating=True), False),
        (endpoint("127.0.0.10", ready=False, terminating=True), False),
    ],
    ids=["ready", "not-ready", "terminating", "ready-but-terminating", "neither"],
)
def test_only_ready_and_not_terminating_endpoints_take_traffic(
    state: Endpoint, routable: bool
) -> None:
    cla = only(load_assignments_for_service(WEB, [endpoint_slice(WEB, state)]))
    assert hosts(cla) == ([("", "127.0.0.10", 8080)] if routable else [])


def test_each_service_port_gets_its_own_assignment_named_for_its_cluster() -> None:
    svc = service("api", http(80, target=8080), grpc(9090), tcp(5432, name="pg"))
    eps = endpoint_slice(svc, endpoint("127.0.0.10"))
    assignments = load_assignments_for_service(svc, [eps])
    assert [cla.cluster_name for cla in assignments] == [
        cluster_name(svc, port) for port in svc.ports
    ]
    assert [hosts(cla) for cla in assignments] == [
        [("", "127.0.0.10", 8080)],
        [("", "127.0.0.10", 9090)],
        [("", "127.0.0.10", 5432)],
    ]


def test_zones_become_localities_in_sorted_order_with_unknown_zone_first() -> None:
    eps = endpoint_slice(
        WEB,
        endpoint("127.0.0.13", zone="zone-b"),
        endpoint("127.0.0.12", zone="zone-a"),
        endpoint("127.0.0.11"),
        endpoint("127.0.0.10", zone="zone-b"),
    )
    cla = only(load_assignments_for_service(WEB, [eps]))
    assert [loc.HasField("locality") for loc in cla.endpoints] == [False, True, True]
    assert hosts(cla) == [
        ("", "127.0.0.11", 8080),
        ("zone-a", "127.0.0.12", 8080),
        ("zone-b", "127.0.0.10", 8080),
        ("zone-b", "127.0.0.13", 8080),
    ]


def test_addresses_sort_numerically_not_lexically() -> None:
    eps = endpoint_slice(
        WEB, endpoint("127.0.0.100"), endpoint("127.0.0.20"), endpoint("127.0.0.3")
    )
    cla = only(load_assignments_for_service(WEB, [eps]))
    assert [address for _, address, _ in hosts(cla)] == ["127.0.0.3", "127.0.0.20", "127.0.0.100"]


@pytest.mark.parametrize(
    ("service_port", "slice_ports", "expected"),
    [
        (ServicePort(80, name=""), {"": 8080}, [8080]),
        (ServicePort(80, name="http"), {"http": 8080, "metrics": 9100}, [8080]),
        (ServicePort(80, name="http"), {"metrics": 9100}, []),
        (ServicePort(80, name=""), {"http": 8080}, []),
        (ServicePort(80, name="http"), {"": 8080}, []),
    ],
    ids=["unnamed", "named-among-others", "name-missing", "unnamed-vs-named", "named-vs-unnamed"],
)
def test_the_slice_port_with_the_service_port_name_gives_the_endpoint_port(
    service_port: ServicePort, slice_ports: dict[str, int], expected: list[int]
) -> None:
    svc = service("web", service_port)
    eps = endpoint_slice(svc, endpoint("127.0.0.10"), ports=slice_ports)
    cla = only(load_assignments_for_service(svc, [eps]))
    assert [port for _, _, port in hosts(cla)] == expected


def test_multiple_slices_merge_and_shared_addresses_appear_once() -> None:
    first = endpoint_slice(WEB, endpoint("127.0.0.10"), endpoint("127.0.0.11"), name="web-1")
    second = endpoint_slice(WEB, endpoint("127.0.0.11"), endpoint("127.0.0.12"), name="web-2")
    cla = only(load_assignments_for_service(WEB, [second, first]))
    assert hosts(cla) == [
        ("", "127.0.0.10", 8080),
        ("", "127.0.0.11", 8080),
        ("", "127.0.0.12", 8080),
    ]


def test_one_address_on_two_ports_across_slices_is_two_endpoints() -> None:
    """A rolling update that changes the container port lists both for a while."""
    old = endpoint_slice(WEB, endpoint("127.0.0.10"), name="web-1", ports={"http": 8080})
    new = endpoint_slice(WEB, endpoint("127.0.0.10"), name="web-2", ports={"http": 8081})
    cla = only(load_assignments_for_service(WEB, [old, new]))
    assert hosts(cla) == [("", "127.0.0.10", 8080), ("", "127.0.0.10", 8081)]


def test_an_address_in_two_zones_keeps_the_zone_of_the_first_slice_by_name() -> None:
    a = endpoint_slice(WEB, endpoint("127.0.0.10", zone="zone-b"), name="web-a")
    b = endpoint_slice(WEB, endpoint("127.0.0.10", zone="zone-a"), name="web-b")
    cla = only(load_assignments_for_service(WEB, [b, a]))
    assert hosts(cla) == [("zone-b", "127.0.0.10", 8080)]


def test_multiple_addresses_on_one_endpoint_each_become_a_host() -> None:
    eps = endpoint_slice(WEB, endpoint("127.0.0.11", "127.0.0.10"))
    cla = only(load_assignments_for_service(WEB, [eps]))
    assert hosts(cla) == [("", "127.0.0.10", 8080), ("", "127.0.0.11", 8080)]


@pytest.mark.parametrize(
    "slices",
    [
        [],
        [endpoint_slice(WEB)],
        [endpoint_slice(WEB, endpoint("127.0.0.10", ready=False))],
    ],
    ids=["no-slices", "empty-slice", "nothing-ready"],
)
def test_a_port_with_no_endpoints_still_gets_an_empty_assignment(
    slices: list[EndpointSlice],
) -> None:
    svc = service("web", http(80), grpc(9090))
    assignments = load_assignments_for_service(svc, slices)
    assert [cla.cluster_name for cla in assignments] == [
        "outbound|80||web.default.svc.cluster.local",
        "outbound|9090||web.default.svc.cluster.local",
    ]
    assert all(len(cla.endpoints) == 0 for cla in assignments)


def test_slices_of_other_services_are_ignored() -> None:
    other = service("other", http(80, target=8080))
    foreign = endpoint_slice(other, endpoint("127.0.0.99"))
    same_name_other_namespace = endpoint_slice(
        service("web", http(80, target=8080), namespace="shop"), endpoint("127.0.0.98")
    )
    mine = endpoint_slice(WEB, endpoint("127.0.0.10"))
    cla = only(load_assignments_for_service(WEB, [foreign, same_name_other_namespace, mine]))
    assert hosts(cla) == [("", "127.0.0.10", 8080)]


def test_fqdn_slices_and_non_ip_addresses_are_skipped_so_envoy_never_rejects_the_cla() -> None:
    fqdn = endpoint_slice(WEB, endpoint("example.com"), name="web-f", address_type="FQDN")
    broken = endpoint_slice(WEB, endpoint("not-an-ip", "127.0.0.10"), name="web-b")
    cla = only(load_assignments_for_service(WEB, [fqdn, broken]))
    assert hosts(cla) == [("", "127.0.0.10", 8080)]


def test_ipv6_endpoints_are_supported() -> None:
    eps = endpoint_slice(WEB, endpoint("::1"), address_type="IPv6")
    assert hosts(only(load_assignments_for_service(WEB, [eps]))) == [("", "::1", 8080)]


def test_udp_service_ports_and_udp_slice_ports_are_not_meshed() -> None:
    dns = service("dns", tcp(53, name="dns-tcp"), ServicePort(53, name="dns", protocol="UDP"))
    eps = EndpointSlice(
        namespace="default",
        name="dns-1",
        service_name="dns",
        ports=(EndpointPort(53, name="dns-tcp"), EndpointPort(53, name="dns", protocol="UDP")),
        endpoints=(endpoint("127.0.0.53"),),
    )
    cla = only(load_assignments_for_service(dns, [eps]))
    assert cla.cluster_name == "outbound|53||dns.default.svc.cluster.local"
    assert hosts(cla) == [("", "127.0.0.53", 53)]


def test_identical_input_in_any_order_serializes_to_identical_bytes() -> None:
    endpoints = [
        endpoint("127.0.0.12", zone="zone-b"),
        endpoint("127.0.0.10", zone="zone-a"),
        endpoint("127.0.0.11"),
    ]
    a = [
        endpoint_slice(WEB, *endpoints, name="web-1"),
        endpoint_slice(WEB, endpoint("127.0.0.13"), name="web-2"),
    ]
    b = [
        endpoint_slice(WEB, endpoint("127.0.0.13"), name="web-2"),
        endpoint_slice(WEB, *reversed(endpoints), name="web-1"),
    ]

    def serialized(slices: list[EndpointSlice]) -> list[bytes]:
        return [
            cla.SerializeToString(deterministic=True)
            for cla in load_assignments_for_service(WEB, slices)
        ]

    assert serialized(a) == serialized(b)
