"""Spec: the capture rules, as data, as packets would meet them, and as installed.

The rules are checked three ways: the exact text the init container feeds to
`iptables-restore` (a golden), a small evaluator of the rules that walks a
connection through nat OUTPUT or PREROUTING the way the kernel does (so each
row of the tables below reads "this connection goes there"), and a real
install in a throwaway network namespace (root only) to show it is idempotent
and removable.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from xds_server.capture import CaptureConfig, CaptureError, IPFamily, install, rules, uninstall
from xds_server.capture.apply import CommandResult
from xds_server.capture.rules import iptables_commands, restore_text
from xds_server.cli import main

INIT_CONTAINER_ARGS = [
    "--outbound-port", "15001",
    "--inbound-port", "15006",
    "--proxy-uid", "1337",
    "--exclude-outbound-ports", "15010,15014",
    "--exclude-inbound-ports", "15020,15021",
]  # fmt: skip
INIT_CONTAINER = CaptureConfig(
    outbound_port=15001,
    inbound_port=15006,
    proxy_uid=1337,
    exclude_outbound_ports=(15010, 15014),
    exclude_inbound_ports=(15020, 15021),
)

GOLDEN_IPV4 = """\
*nat
:MESH_INBOUND - [0:0]
:MESH_IN_REDIRECT - [0:0]
:MESH_OUTPUT - [0:0]
:MESH_REDIRECT - [0:0]
-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j MESH_INBOUND
-A MESH_INBOUND -p tcp --dport 15001 -j RETURN
-A MESH_INBOUND -p tcp --dport 15006 -j RETURN
-A MESH_INBOUND -p tcp --dport 15020 -j RETURN
-A MESH_INBOUND -p tcp --dport 15021 -j RETURN
-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT
-A OUTPUT -p tcp -j MESH_OUTPUT
-A MESH_OUTPUT -p tcp --dport 15010 -j RETURN
-A MESH_OUTPUT -p tcp --dport 15014 -j RETURN
-A MESH_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A MESH_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j MESH_IN_REDIRECT
-A MESH_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A MESH_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j MESH_IN_REDIRECT
-A MESH_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A MESH_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A MESH_OUTPUT -d 127.0.0.1/32 -j RETURN
-A MESH_OUTPUT -j MESH_REDIRECT
COMMIT
"""


def test_the_init_containers_rules_are_exactly_these() -> None:
    assert restore_text(INIT_CONTAINER) == GOLDEN_IPV4


def test_ipv6_uses_the_ipv6_loopback_and_passthrough_source() -> None:
    text = restore_text(INIT_CONTAINER, IPFamily.IPV6)
    assert "127.0.0" not in text
    assert "-A MESH_OUTPUT -o lo -s ::6/128 -j RETURN" in text
    assert "-A MESH_OUTPUT -d ::1/128 -j RETURN" in text
    expected = GOLDEN_IPV4.replace("127.0.0.6/32", "::6/128").replace("127.0.0.1/32", "::1/128")
    assert text == expected


def test_the_same_rules_as_separate_commands() -> None:
    commands = iptables_commands(INIT_CONTAINER)
    assert commands[0] == ["iptables", "-t", "nat", "-N", "MESH_INBOUND"]
    assert commands[4:] == [["iptables", "-t", "nat", *rule] for rule in rules(INIT_CONTAINER)]
    assert iptables_commands(INIT_CONTAINER, IPFamily.IPV6)[0][0] == "ip6tables"


# -- the rules as connections meet them ------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """The first packet of a TCP connection, as nat OUTPUT or PREROUTING sees it."""

    dst: str
    dport: int
    src: str = "10.0.0.5"
    out: str = "eth0"
    uid: int = 0
    gid: int = 0


@dataclass
class Walk:
    chains: dict[str, list[list[str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, config: CaptureConfig, family: IPFamily = IPFamily.IPV4) -> Walk:
        walk = cls()
        for rule in rules(config, family):
            assert rule[0] == "-A"
            walk.chains.setdefault(rule[1], []).append(rule[2:])
        return walk

    def verdict(self, hook: str, connection: Connection) -> str:
        """ "redirect:<port>" or "accept" (nothing redirected it)."""
        return self._chain(hook, connection) or "accept"

    def _chain(self, chain: str, connection: Connection) -> str | None:
        for rule in self.chains.get(chain, []):
            target, to_port = self._matches(rule, connection)
            if target is None:
                continue
            if target == "RETURN":
                return None
            if target == "REDIRECT":
                return f"redirect:{to_port}"
            result = self._chain(target, connection)
            if result is not None:
                return result
        return None

    @staticmethod
    def _matches(rule: list[str], c: Connection) -> tuple[str | None, str | None]:
        """(the target, its --to-ports) if `rule` matches, else (None, None)."""
        words = iter(rule)
        negate = False
        target: str | None = None
        to_port: str | None = None
        for word in words:
            if word == "!":
                negate = True
                continue
            if word in ("-p", "-m"):
                next(words)  # only tcp, and the owner module, are used
                continue
            if word == "-j":
                target = next(words)
                continue
            if word == "--to-ports":
                to_port = next(words)
                continue
            value = next(words)
            checks = {
                "--dport": lambda v: c.dport == int(v),
                "-o": lambda v: c.out == v,
                "-s": lambda v: ipaddress.ip_address(c.src) in ipaddress.ip_network(v),
                "-d": lambda v: ipaddress.ip_address(c.dst) in ipaddress.ip_network(v),
                "--uid-owner": lambda v: c.uid == int(v),
                "--gid-owner": lambda v: c.gid == int(v),
            }
            if checks[word](value) == negate:
                return None, None
            negate = False
        return target, to_port


POD_IP = "10.0.0.5"
SIDECAR = {"uid": 1337, "gid": 1337}
TO_SIDECAR_OUT = "redirect:15001"
TO_SIDECAR_IN = "redirect:15006"

OUTBOUND: dict[str, tuple[Connection, str]] = {
    "app to a Service's cluster IP": (Connection("10.96.0.10", 8080), TO_SIDECAR_OUT),
    "app to anywhere else (Envoy passes it through)": (
        Connection("93.184.216.34", 443),
        TO_SIDECAR_OUT,
    ),
    "sidecar to an endpoint": (Connection("10.0.0.9", 8080, **SIDECAR), "accept"),
    "sidecar's group, any user": (Connection("10.0.0.9", 8080, uid=1000, gid=1337), "accept"),
    "app to its own loopback": (
        Connection("127.0.0.1", 8080, src="127.0.0.1", out="lo"),
        "accept",
    ),
    "app to the sidecar's admin": (
        Connection("127.0.0.1", 15000, src="127.0.0.1", out="lo"),
        "accept",
    ),
    "app to its own pod IP": (Connection(POD_IP, 8080, src=POD_IP, out="lo"), "accept"),
    "sidecar to its own pod IP (a Service whose endpoint is this pod)": (
        Connection(POD_IP, 8080, src=POD_IP, out="lo", **SIDECAR),
        TO_SIDECAR_IN,
    ),
    "sidecar's inbound passthrough, from 127.0.0.6": (
        Connection(POD_IP, 9091, src="127.0.0.6", out="lo", **SIDECAR),
        "accept",
    ),
    "sidecar to the app on loopback (an inbound cluster)": (
        Connection("127.0.0.1", 8080, src="127.0.0.1", out="lo", **SIDECAR),
        "accept",
    ),
    "app to the control plane's xDS port": (Connection("10.96.0.2", 15010), "accept"),
    "app to the control plane's admin port": (Connection("10.96.0.2", 15014), "accept"),
}


@pytest.mark.parametrize(("connection", "expected"), OUTBOUND.values(), ids=OUTBOUND.keys())
def test_outbound_connections(connection: Connection, expected: str) -> None:
    assert Walk.of(INIT_CONTAINER).verdict("OUTPUT", connection) == expected


INBOUND: dict[str, tuple[int, str]] = {
    "an app port": (8080, TO_SIDECAR_IN),
    "any other port": (9999, TO_SIDECAR_IN),
    "an excluded port (health)": (15021, "accept"),
    "another excluded port": (15020, "accept"),
    "the inbound capture port itself": (15006, "accept"),
    "the outbound port": (15001, "accept"),
}


@pytest.mark.parametrize(("port", "expected"), INBOUND.values(), ids=INBOUND.keys())
def test_inbound_connections(port: int, expected: str) -> None:
    arriving = Connection(POD_IP, port, src="10.0.0.9")
    assert Walk.of(INIT_CONTAINER).verdict("PREROUTING", arriving) == expected


def test_only_included_inbound_ports_are_captured_when_listed() -> None:
    walk = Walk.of(CaptureConfig(include_inbound_ports=(8080, 15006)))
    verdicts = {
        port: walk.verdict("PREROUTING", Connection(POD_IP, port)) for port in (8080, 9090, 15006)
    }
    assert verdicts == {8080: TO_SIDECAR_IN, 9090: "accept", 15006: "accept"}


def test_an_empty_inbound_list_captures_no_inbound_traffic() -> None:
    config = CaptureConfig(include_inbound_ports=())
    assert not any(rule[1] == "PREROUTING" for rule in rules(config))
    assert Walk.of(config).verdict("OUTPUT", Connection("10.96.0.10", 80)) == TO_SIDECAR_OUT


def test_outbound_cidrs_can_be_excluded_or_listed() -> None:
    excluded = Walk.of(CaptureConfig(exclude_outbound_cidrs=("169.254.0.0/16", "fd00::/8")))
    assert excluded.verdict("OUTPUT", Connection("169.254.169.254", 80)) == "accept"
    assert excluded.verdict("OUTPUT", Connection("10.96.0.10", 80)) == TO_SIDECAR_OUT

    listed = Walk.of(CaptureConfig(include_outbound_cidrs=("10.96.0.0/12",)))
    assert listed.verdict("OUTPUT", Connection("10.96.0.10", 80)) == TO_SIDECAR_OUT
    assert listed.verdict("OUTPUT", Connection("93.184.216.34", 80)) == "accept"


def test_cidrs_go_to_their_own_family() -> None:
    config = CaptureConfig(exclude_outbound_cidrs=("10.1.2.3/8", "fd00::1/8"))
    assert "-d 10.0.0.0/8 -j RETURN" in restore_text(config, IPFamily.IPV4)
    assert "fd00" not in restore_text(config, IPFamily.IPV4)
    assert "-d fd00::/8 -j RETURN" in restore_text(config, IPFamily.IPV6)
    assert "10.0.0.0" not in restore_text(config, IPFamily.IPV6)


def test_a_separate_proxy_gid_is_exempt_too() -> None:
    walk = Walk.of(CaptureConfig(proxy_uid=1337, proxy_gid=2000))
    assert walk.verdict("OUTPUT", Connection("10.0.0.9", 80, uid=5, gid=2000)) == "accept"
    assert walk.verdict("OUTPUT", Connection("10.0.0.9", 80, uid=5, gid=1337)) == TO_SIDECAR_OUT


def test_ipv6_connections_take_the_same_paths() -> None:
    walk = Walk.of(INIT_CONTAINER, IPFamily.IPV6)
    pod = "fd00::5"
    assert walk.verdict("OUTPUT", Connection("fd00:10::1", 80, src=pod)) == TO_SIDECAR_OUT
    assert walk.verdict("OUTPUT", Connection("::1", 80, src="::1", out="lo")) == "accept"
    assert walk.verdict("OUTPUT", Connection(pod, 8080, src="::6", out="lo", **SIDECAR)) == "accept"
    assert (
        walk.verdict("OUTPUT", Connection(pod, 8080, src=pod, out="lo", **SIDECAR)) == TO_SIDECAR_IN
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"outbound_port": 0}, "port number"),
        ({"exclude_inbound_ports": (70000,)}, "port number"),
        ({"outbound_port": 15006, "inbound_port": 15006}, "both 15006"),
        ({"proxy_uid": -1}, "UID"),
        ({"exclude_outbound_cidrs": ("10.0.0.0/33",)}, "10.0.0.0/33"),
        ({"include_outbound_cidrs": ("backend",)}, "backend"),
    ],
)
def test_a_bad_config_is_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CaptureConfig(**options)  # type: ignore[arg-type]


# -- installing, with a fake runner -------------------------------------------------------


class FakeIptables:
    """Records commands; the jump deletions succeed `jumps` times each, then fail."""

    def __init__(self, jumps: int = 0, fail: str | None = None) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.jumps: dict[str, int] = {}
        self.initial_jumps = jumps
        self.fail = fail

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        self.calls.append((list(argv), stdin))
        if self.fail and argv[0] == self.fail:
            return CommandResult(1, "", f"{self.fail}: Permission denied (you must be root)")
        if "-D" in argv:
            key = " ".join(argv)
            left = self.jumps.setdefault(key, self.initial_jumps)
            if left == 0:
                return CommandResult(1, "", "Bad rule (does a matching rule exist?)")
            self.jumps[key] = left - 1
        return CommandResult(0)

    def commands(self) -> list[str]:
        return [" ".join(argv) for argv, _ in self.calls]


def test_install_deletes_old_jumps_then_restores_without_flushing() -> None:
    fake = FakeIptables(jumps=2)

    applied = install(INIT_CONTAINER, runner=fake)

    assert applied == {IPFamily.IPV4: GOLDEN_IPV4}
    assert fake.commands() == [
        *["iptables -t nat -D PREROUTING -p tcp -j MESH_INBOUND -w 5"] * 3,
        *["iptables -t nat -D OUTPUT -p tcp -j MESH_OUTPUT -w 5"] * 3,
        "iptables-restore --noflush -w 5",
    ]
    assert fake.calls[-1][1] == GOLDEN_IPV4


def test_install_for_ipv6_puts_the_passthrough_source_on_loopback() -> None:
    fake = FakeIptables()
    install(INIT_CONTAINER, [IPFamily.IPV4, IPFamily.IPV6], runner=fake)
    commands = fake.commands()
    assert "ip -6 addr replace ::6/128 dev lo" in commands
    assert commands[-1] == "ip6tables-restore --noflush -w 5"
    assert fake.calls[-1][1] == restore_text(INIT_CONTAINER, IPFamily.IPV6)


def test_a_failed_restore_is_an_error_with_iptables_message() -> None:
    with pytest.raises(CaptureError, match="Permission denied"):
        install(INIT_CONTAINER, runner=FakeIptables(fail="iptables-restore"))


def test_endless_duplicate_jumps_are_an_error_not_a_hang() -> None:
    with pytest.raises(CaptureError, match="copies"):
        install(INIT_CONTAINER, runner=FakeIptables(jumps=10_000))


def test_uninstall_removes_jumps_then_empties_and_deletes_the_chains() -> None:
    fake = FakeIptables(jumps=1)
    uninstall(runner=fake)
    commands = [c.removesuffix(" -w 5") for c in fake.commands()]
    assert commands[:4] == [
        *["iptables -t nat -D PREROUTING -p tcp -j MESH_INBOUND"] * 2,
        *["iptables -t nat -D OUTPUT -p tcp -j MESH_OUTPUT"] * 2,
    ]
    chains = ["MESH_INBOUND", "MESH_IN_REDIRECT", "MESH_OUTPUT", "MESH_REDIRECT"]
    assert commands[4:] == [f"iptables -t nat -F {c}" for c in chains] + [
        f"iptables -t nat -X {c}" for c in chains
    ]


# -- the command ----------------------------------------------------------------------


def test_the_init_containers_command_line_dry_run_prints_the_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["capture-init", *INIT_CONTAINER_ARGS, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert GOLDEN_IPV4 in out
    assert "iptables -t nat -D OUTPUT -p tcp -j MESH_OUTPUT" in out
    assert "iptables-restore --noflush" in out
    assert "ip6tables" not in out


def test_dry_run_with_ipv6_prints_both_families(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture-init", *INIT_CONTAINER_ARGS, "--ipv6", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert restore_text(INIT_CONTAINER, IPFamily.IPV6) in out
    assert "ip -6 addr replace ::6/128 dev lo" in out


def test_optional_flags_reach_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "capture-init", "--proxy-gid", "2000", "--include-inbound-ports", "8080,9090",
        "--exclude-outbound-cidrs", "169.254.169.254/32", "--include-outbound-cidrs", "*",
        "--dry-run",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "--gid-owner 2000" in out
    assert "-A MESH_INBOUND -p tcp --dport 9090 -j MESH_IN_REDIRECT" in out
    assert "-A MESH_OUTPUT -d 169.254.169.254/32 -j RETURN" in out


@pytest.mark.parametrize(
    "bad",
    [
        ["--exclude-outbound-ports", "15010,http"],
        ["--outbound-port", "0"],
        ["--proxy-uid", "envoy"],
        ["--exclude-outbound-cidrs", "10.0.0.0/40"],
    ],
)
def test_bad_flags_are_refused(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["capture-init", *bad, "--dry-run"])
    assert exited.value.code == 2
    assert "capture-init" in capsys.readouterr().err


def test_equal_ports_are_refused_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["capture-init", "--outbound-port", "15006", "--inbound-port", "15006", "--dry-run"]
    assert main(argv) == 2
    assert "both 15006" in capsys.readouterr().err


# -- installing for real, in a network namespace of our own ---------------------------------


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    for tool in ("ip", "iptables", "iptables-restore", "iptables-save"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"capture-{secrets.token_hex(3)}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=60
    )


def _nat_rules(netns: str) -> list[str]:
    saved = _in(netns, "iptables-save", "-t", "nat")
    assert saved.returncode == 0, saved.stderr
    return [line for line in saved.stdout.splitlines() if line.startswith("-A ")]


def test_installing_twice_leaves_one_copy_and_cleanup_removes_everything(netns: str) -> None:
    command = [sys.executable, "-m", "xds_server.cli", "capture-init", *INIT_CONTAINER_ARGS]
    first = _in(netns, *command)
    if first.returncode != 0 and "Could not fetch rule set" in first.stderr:
        pytest.skip(f"iptables nat is unavailable here: {first.stderr.strip()}")
    assert first.returncode == 0, first.stderr
    once = _nat_rules(netns)

    again = _in(netns, *command)

    assert again.returncode == 0, again.stderr
    assert _nat_rules(netns) == once
    assert len(once) == len(rules(INIT_CONTAINER))
    assert "-A OUTPUT -p tcp -j MESH_OUTPUT" in once

    cleaned = _in(netns, sys.executable, "-m", "xds_server.cli", "capture-init", "--cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    saved = _in(netns, "iptables-save", "-t", "nat").stdout
    assert "MESH_" not in saved
