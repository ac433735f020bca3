"""Mutated and hostile manifests for fuzzing a watched directory end to end.

A seeded generator (`ManifestMutator`, driven by `random.Random(seed)`) starts
from valid Service, EndpointSlice and Pod documents and breaks them one way at
a time, in labelled categories: wrong types, missing fields, out-of-range and
5,000-digit integers, bad and mixed-family IPs, long names (up to megabytes),
unicode, lone surrogates, NUL and control characters, invalid UTF-8, colliding
names, near-miss kinds, duplicate keys, YAML 1.1 surprises, null documents,
deep nesting, huge documents, alias bombs, bad file names and special files.

Each `Mutation` says what it expects of a validating control plane:

* REJECT: Kubernetes (or the limits in `xds_server.sources.limits`) refuses
  it, so its file must be listed in `/api/errors`;
* ACCEPT: a valid object (boundary values, unicode where Kubernetes allows
  it), so its file must not be listed;
* EITHER: Kubernetes' own answer is unclear or the object is simply not the
  mesh's business (a ConfigMap, YAML 1.1 booleans), so both are tolerated.

A mutation either creates a new file (objects named after its index, so no two
mutations collide unless a collision is the point) or replaces the content of
one of the mesh's good files (`target`), always keeping that object's
identity, so the control plane must keep the file's last good state.
`REGRESSIONS` are fixed cases, one per crash, hang or silent drop found so far;
`corpus` runs them before the random ones.  Later kinds plug in by adding a
base document and a field table (`FIELDS`) and, where needed, a category.
"""

from __future__ import annotations

import copy
import enum
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from xds_server.sources import limits

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
FUZZ_IP_PREFIX = "127.0.88."
"""Addresses of fuzzed endpoints and pods: on loopback, nothing listens there."""


class Expect(enum.StrEnum):
    REJECT = "reject"
    ACCEPT = "accept"
    EITHER = "either"


@dataclass(frozen=True)
class Mutation:
    """One file's worth of hostile input, labelled with its category."""

    index: int
    category: str
    description: str
    data: bytes
    expect: Expect
    tail: bytes = b".yaml"
    """The file name after the `token`; may hold bytes that are not UTF-8."""
    target: str | None = None
    """The good file whose content this replaces (None: a new file)."""
    special: str | None = None
    """Not a regular file: "fifo", "symlink-loop", "dangling-symlink" or "directory"."""

    @property
    def token(self) -> str:
        """What every file name of this mutation starts with, and errors are matched by."""
        return f"m{self.index:05d}-"

    @property
    def file_name(self) -> bytes:
        return self.token.encode() + self.tail

    def literal(self, limit: int = 400) -> str:
        """The content as a Python literal, cut to `limit` characters."""
        text = repr(self.data)
        if len(text) <= limit:
            return text
        return f"{text[:limit]}... ({len(self.data):,} bytes)"


@dataclass(frozen=True)
class GoodFile:
    """A file of the mesh under test whose objects must keep serving traffic."""

    name: str
    documents: tuple[dict[str, Any], ...]

    def data(self) -> bytes:
        return render(self.documents)


# -- rendering ----------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """YAML text placed verbatim where a value goes (one line, flow style)."""

    text: str


_PLACEHOLDER = "RAWX{:06d}XRAW"


def render(documents: Sequence[Any], *, suffixes: Sequence[str] = ()) -> bytes:
    """Documents as multi-document YAML (UTF-8); `Raw` values go in verbatim.

    `suffixes[i]`, if given, is text appended to document i (top-level lines).
    """
    raws: list[str] = []

    def lift(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return _PLACEHOLDER.format(len(raws) - 1)
        if isinstance(value, dict):
            return {key: lift(item) for key, item in value.items()}
        if isinstance(value, list):
            return [lift(item) for item in value]
        return value

    texts = []
    for i, document in enumerate(documents):
        text = yaml.safe_dump(lift(document), sort_keys=False, allow_unicode=True, width=10**9)
        if document is None:
            text = "null\n"
        texts.append(text + (suffixes[i] if i < len(suffixes) else ""))
    out = "---\n".join(texts)
    # Highest index first: token 1 must not match the start of token 10.
    for i in sorted(range(len(raws)), reverse=True):
        out = out.replace(_PLACEHOLDER.format(i), raws[i])
    return out.encode("utf-8", "surrogatepass")


# -- valid base documents --------------------------------------------------------------


def service(name: str, port: int, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": name},
            "annotations": {"note": "fuzz"},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": name},
            "ports": [
                {"name": "http", "port": port, "targetPort": port, "protocol": "TCP",
                 "appProtocol": "http"},
            ],
        },
    }  # fmt: skip


def endpoint_slice(
    name: str, service_name: str, addresses: Sequence[str], port: int, namespace: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {SERVICE_NAME_LABEL: service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "zone": "zone-a",
                "nodeName": "node-1",
                "hostname": f"pod-{i}",
                "targetRef": {"kind": "Pod", "name": f"{service_name}-{i}", "namespace": namespace},
            }
            for i, address in enumerate(addresses)
        ],
    }


def pod(name: str, ip: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "serviceAccountName": "fuzz",
            "nodeName": "node-1",
            "containers": [{"name": "app", "image": "example/app:1"}],
        },
        "status": {"phase": "Running", "podIP": ip},
    }


# -- field tables: where each kind keeps what, and of which type ---------------------------

Path = tuple[str | int, ...]

FIELDS: dict[str, tuple[tuple[Path, str], ...]] = {
    "Service": (
        (("kind",), "str"), (("apiVersion",), "str"), (("metadata",), "map"),
        (("metadata", "name"), "str"), (("metadata", "namespace"), "str"),
        (("metadata", "labels"), "map"), (("metadata", "labels", "app"), "str"),
        (("metadata", "annotations"), "map"), (("metadata", "annotations", "note"), "str"),
        (("spec",), "map"), (("spec", "type"), "str"), (("spec", "selector"), "map"),
        (("spec", "selector", "app"), "str"), (("spec", "ports"), "list"),
        (("spec", "ports", 0), "map"), (("spec", "ports", 0, "name"), "str"),
        (("spec", "ports", 0, "port"), "int"), (("spec", "ports", 0, "targetPort"), "int|str"),
        (("spec", "ports", 0, "protocol"), "str"), (("spec", "ports", 0, "appProtocol"), "str"),
    ),
    "EndpointSlice": (
        (("kind",), "str"), (("apiVersion",), "str"), (("metadata",), "map"),
        (("metadata", "name"), "str"), (("metadata", "namespace"), "str"),
        (("metadata", "labels"), "map"), (("metadata", "labels", SERVICE_NAME_LABEL), "str"),
        (("addressType",), "str"), (("ports",), "list"), (("ports", 0), "map"),
        (("ports", 0, "name"), "str"), (("ports", 0, "port"), "int"),
        (("ports", 0, "protocol"), "str"), (("endpoints",), "list"), (("endpoints", 0), "map"),
        (("endpoints", 0, "addresses"), "list"), (("endpoints", 0, "addresses", 0), "str"),
        (("endpoints", 0, "conditions"), "map"), (("endpoints", 0, "conditions", "ready"), "bool"),
        (("endpoints", 0, "conditions", "serving"), "bool"),
        (("endpoints", 0, "conditions", "terminating"), "bool"),
        (("endpoints", 0, "zone"), "str"), (("endpoints", 0, "nodeName"), "str"),
        (("endpoints", 0, "hostname"), "str"), (("endpoints", 0, "targetRef"), "map"),
        (("endpoints", 0, "targetRef", "kind"), "str"),
        (("endpoints", 0, "targetRef", "name"), "str"),
    ),
    "Pod": (
        (("kind",), "str"), (("apiVersion",), "str"), (("metadata",), "map"),
        (("metadata", "name"), "str"), (("metadata", "namespace"), "str"),
        (("metadata", "labels"), "map"), (("metadata", "labels", "app"), "str"),
        (("spec",), "map"), (("spec", "serviceAccountName"), "str"),
        (("spec", "nodeName"), "str"), (("status",), "map"), (("status", "podIP"), "str"),
        (("status", "phase"), "str"),
    ),
}  # fmt: skip
"""Typed fields the mesh reads; a wrong type in any of them is an error in Kubernetes too."""

IDENTITY: frozenset[Path] = frozenset(
    {("kind",), ("apiVersion",), ("metadata",), ("metadata", "name"), ("metadata", "namespace")}
)
"""Fields a mutation of a good file leaves alone, so the object stays recognisable."""

REQUIRED: dict[str, tuple[Path, ...]] = {
    "Service": (("kind",), ("apiVersion",), ("metadata",), ("metadata", "name"),
                ("spec", "ports"), ("spec", "ports", 0, "port")),
    "EndpointSlice": (("metadata", "name"), ("metadata", "labels", SERVICE_NAME_LABEL),
                      ("addressType",), ("endpoints", 0, "addresses")),
    "Pod": (("metadata", "name"),),
}  # fmt: skip
OPTIONAL: dict[str, tuple[Path, ...]] = {
    "Service": (("metadata", "namespace"), ("metadata", "labels"), ("metadata", "annotations"),
                ("spec", "selector"), ("spec", "type"), ("spec", "ports", 0, "name"),
                ("spec", "ports", 0, "targetPort"), ("spec", "ports", 0, "protocol"),
                ("spec", "ports", 0, "appProtocol")),
    "EndpointSlice": (("ports",), ("ports", 0, "name"), ("ports", 0, "protocol"),
                      ("endpoints", 0, "conditions"), ("endpoints", 0, "zone"),
                      ("endpoints", 0, "nodeName"), ("endpoints", 0, "hostname"),
                      ("endpoints", 0, "targetRef")),
    "Pod": (("spec",), ("status",), ("status", "podIP"), ("spec", "serviceAccountName")),
}  # fmt: skip

WRONG_VALUES: dict[str, tuple[Any, ...]] = {
    "str": (123, 12.5, True, ["a"], {"a": "b"}),
    "int": ("80", "http", 80.5, True, [80], {"port": 80}),
    "int|str": (80.5, True, [80], {"port": 80}),
    "bool": ("true", "yes", 1, 0, [True], {"a": True}),
    "map": ("text", 1, ["a"], True),
    "list": ("text", 1, {"a": 1}, True),
}


def get_at(document: Any, path: Path) -> Any:
    for step in path:
        document = document[step]
    return document


def set_at(document: Any, path: Path, value: Any) -> None:
    """Set the field at `path`, creating missing mappings on the way."""
    for step in path[:-1]:
        if isinstance(step, str) and not isinstance(document.get(step), dict | list):
            document[step] = {}
        document = document[step]
    document[path[-1]] = value


def delete_at(document: Any, path: Path) -> None:
    del get_at(document, path[:-1])[path[-1]]


# -- the generator ---------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    """What a category makes; `ManifestMutator` adds the index and the label."""

    description: str
    data: bytes
    expect: Expect
    tail: bytes = b".yaml"
    target: str | None = None
    special: str | None = None


@dataclass
class Context:
    """One mutation being made: its random stream, names, and the good files."""

    rng: random.Random
    index: int
    good: Sequence[GoodFile]

    @property
    def name(self) -> str:
        return f"fz{self.index}"

    def base(self, kind: str | None = None) -> dict[str, Any]:
        """A fresh valid document of `kind` (default: any of the three), named for this index."""
        kind = kind or self.rng.choice(("Service", "Service", "EndpointSlice", "Pod"))
        port = self.rng.randint(1, 65535)
        ip = f"{FUZZ_IP_PREFIX}{self.rng.randint(1, 254)}"
        if kind == "Service":
            return service(self.name, port)
        if kind == "EndpointSlice":
            return endpoint_slice(f"{self.name}-slice", self.name, [ip], port)
        return pod(self.name, ip)

    def companion(self, document: dict[str, Any]) -> dict[str, Any] | None:
        """The valid object that makes `document` reach translation: a Service's slice, a
        slice's Service (a slice without its Service, or the reverse, is never translated)."""
        if document["kind"] == "Service":
            port = document["spec"]["ports"][0]["port"]
            ip = f"{FUZZ_IP_PREFIX}{self.rng.randint(1, 254)}"
            return endpoint_slice(f"{self.name}-slice", self.name, [ip], port)
        if document["kind"] == "EndpointSlice":
            return service(self.name, document["ports"][0]["port"])
        return None

    def good_target(self, probability: float = 0.4) -> tuple[GoodFile, int] | None:
        """Sometimes: a good file and the index of the document in it to break."""
        if not self.good or self.rng.random() >= probability:
            return None
        good = self.rng.choice(self.good)
        return good, self.rng.randrange(len(good.documents))


Mutate = Callable[[dict[str, Any]], str]
"""Breaks one document in place and says what it did."""


def _doc_draft(
    ctx: Context,
    expect: Expect,
    mutate: Mutate,
    *,
    kind: str | None = None,
    in_good_file: bool = False,
) -> Draft:
    """Apply `mutate` to a base document, or (if `in_good_file`) to a copy of a good one.

    A good file's document may be of another kind than `kind`: `mutate` then
    breaks that kind's nearest equivalent, keeping the object's identity.
    """
    target = ctx.good_target() if in_good_file and expect is Expect.REJECT else None
    if target is None:
        document = ctx.base(kind)
        partner = ctx.companion(document) if ctx.rng.random() < 0.7 else None
        what = mutate(document)
        return Draft(what, render([document] if partner is None else [document, partner]), expect)
    good, position = target
    documents = [copy.deepcopy(d) for d in good.documents]
    what = mutate(documents[position])
    return Draft(f"{what} (in {good.name})", render(documents), expect, target=good.name)


def _kind_of(document: dict[str, Any]) -> str:
    return str(document.get("kind", "Service")).strip()


def _exists(document: Any, path: Path) -> bool:
    try:
        get_at(document, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _good_kind(ctx: Context) -> str:
    return ctx.rng.choice(("Service", "EndpointSlice", "Pod"))


# Each category: (rng, context) -> Draft.  They are listed with their weights below.


def wrong_type(ctx: Context) -> Draft:
    in_good = ctx.rng.random() < 0.25

    def mutate(document: dict[str, Any]) -> str:
        candidates = [
            (path, kind) for path, kind in FIELDS[_kind_of(document)]
            if _exists(document, path) and not (in_good and path in IDENTITY)
        ]  # fmt: skip
        path, kind = ctx.rng.choice(candidates)
        value = ctx.rng.choice(WRONG_VALUES[kind])
        set_at(document, path, value)
        return f"wrong type: {_kind_of(document)} {_show_path(path)} = {value!r}"

    return _doc_draft(ctx, Expect.REJECT, mutate, in_good_file=in_good)


def missing_field(ctx: Context) -> Draft:
    kind = _good_kind(ctx)
    required = ctx.rng.random() < 0.6
    path = ctx.rng.choice(REQUIRED[kind] if required else OPTIONAL[kind])
    expect = Expect.REJECT if required else Expect.ACCEPT
    in_good = required and path not in IDENTITY and kind != "Pod"

    def mutate(document: dict[str, Any]) -> str:
        here = _kind_of(document)
        gone = path if here == kind else next(p for p in REQUIRED[here] if p not in IDENTITY)
        delete_at(document, gone)
        return f"missing {'required' if required else 'optional'} {here} field {_show_path(gone)}"

    return _doc_draft(ctx, expect, mutate, kind=kind, in_good_file=in_good)


PORT_PATHS = {
    "Service": (("spec", "ports", 0, "port"), ("spec", "ports", 0, "targetPort"),
                ("spec", "ports", 0, "nodePort")),
    "EndpointSlice": (("ports", 0, "port"),),
}  # fmt: skip


def out_of_range(ctx: Context) -> Draft:
    kind = ctx.rng.choice(("Service", "EndpointSlice"))
    path = ctx.rng.choice(PORT_PATHS[kind])
    value = ctx.rng.choice((-1, 65536, 70000, 2**31, 2**63 + 1, -(2**63)))
    if path[-1] == "port":
        value = ctx.rng.choice((0, value))  # 0 is "unset" for targetPort and nodePort

    def mutate(document: dict[str, Any]) -> str:
        here = _kind_of(document)
        where = path if here == kind else PORT_PATHS[here][0]
        set_at(document, where, value)
        return f"{here} {_show_path(where)} = {value}"

    return _doc_draft(ctx, Expect.REJECT, mutate, kind=kind, in_good_file=True)


def huge_integer(ctx: Context) -> Draft:
    digits = ctx.rng.choice((21, 30, 4300, 4301, 5000, 20000))
    number = "".join(ctx.rng.choice("123456789") for _ in range(digits))
    text = ctx.rng.choice(
        (number, f"-{number}", f"0x{number}", f"{number}.5", f"+{number}", f"{number[:200]}e99")
    )
    kind = ctx.rng.choice(("Service", "EndpointSlice", "Pod"))
    paths: dict[str, tuple[Path, ...]] = {
        "Service": (*PORT_PATHS["Service"], ("metadata", "generation"), ("spec", "x-unknown")),
        "EndpointSlice": (("ports", 0, "port"), ("metadata", "deletionGracePeriodSeconds")),
        "Pod": (("spec", "terminationGracePeriodSeconds"), ("spec", "priority")),
    }
    path = ctx.rng.choice(paths[kind])

    def mutate(document: dict[str, Any]) -> str:
        here = _kind_of(document)
        where = path if here == kind else paths[here][0]
        set_at(document, where, Raw(text))
        return f"{here} {_show_path(where)} = a {digits}-digit number ({text[:12]}...)"

    return _doc_draft(ctx, Expect.REJECT, mutate, kind=kind, in_good_file=True)


BAD_IPS = (
    "not-an-ip", "256.1.1.1", "1.2.3", "01.2.3.4", "1.2.3.4/32", " 1.2.3.4", "1.2.3.4 ",
    "1.2.3.4.5", "", "0x7f.0.0.1", "127.1", "2130706433", "1.2.3.4:80",
    "\uff11.\uff12.\uff13.\uff14", "127.0.0.1\n", "::g", "1::2::3", "::1/128", "fe80::1%eth0",
)  # fmt: skip
"""Not an IP address of any family."""
NOT_IPV4 = ("::1", "::ffff:127.0.0.1", "fd00::1")
NOT_IPV6 = ("127.0.0.1", "1.2.3.4")


def bad_ip(ctx: Context) -> Draft:
    where = ctx.rng.choice(("slice", "slice", "ipv6-slice", "cluster-ip", "pod-ip"))
    if where == "slice":
        address = ctx.rng.choice(BAD_IPS + NOT_IPV4)
    elif where == "ipv6-slice":
        address = ctx.rng.choice(BAD_IPS[-4:] + NOT_IPV6)
    else:  # an empty clusterIP or podIP is "none yet", not an error
        address = ctx.rng.choice([ip for ip in BAD_IPS if ip])

    def mutate(document: dict[str, Any]) -> str:
        here = _kind_of(document)
        if here == "EndpointSlice":
            if where == "ipv6-slice":
                document["addressType"] = "IPv6"
            set_at(document, ("endpoints", 0, "addresses", 0), address)
            return f"invalid IP: address {address!r} in an {document['addressType']} slice"
        value = address if where in ("cluster-ip", "pod-ip") else "1.2.3.999"
        field = ("spec", "clusterIP") if here == "Service" else ("status", "podIP")
        set_at(document, field, value)
        return f"invalid IP: {here} {_show_path(field)} {value!r}"

    kind = {"cluster-ip": "Service", "pod-ip": "Pod"}.get(where, "EndpointSlice")
    return _doc_draft(ctx, Expect.REJECT, mutate, kind=kind, in_good_file=where != "pod-ip")


def valid_ip(ctx: Context) -> Draft:
    """Other address families and forms Kubernetes accepts, or may: never a crash."""
    choice = ctx.rng.choice(("ipv6", "fqdn", "cluster-ip-v6", "cluster-ips-dual"))

    def mutate(document: dict[str, Any]) -> str:
        if choice == "ipv6":
            document["addressType"] = "IPv6"
            set_at(document, ("endpoints", 0, "addresses", 0), "fd00::88:1")
        elif choice == "fqdn":
            document["addressType"] = "FQDN"
            set_at(document, ("endpoints", 0, "addresses", 0), "pod-0.example.internal")
        elif choice == "cluster-ip-v6":
            document["spec"]["clusterIP"] = f"fd00::{ctx.index:x}"
        else:
            document["spec"]["clusterIP"] = f"127.0.89.{ctx.index % 250 + 1}"
            document["spec"]["clusterIPs"] = [document["spec"]["clusterIP"], "fd00::1"]
        return f"other address form: {choice}"

    kind = "EndpointSlice" if choice in ("ipv6", "fqdn") else "Service"
    return _doc_draft(ctx, Expect.EITHER, mutate, kind=kind)


LONG_FIELDS: tuple[tuple[str, Path, int, int, str], ...] = (
    # kind, field, longest valid length, shortest invalid length, what fills it
    ("Service", ("metadata", "name"), 63, 64, "dns1035"),
    ("Service", ("metadata", "namespace"), 63, 64, "dns1035"),
    ("EndpointSlice", ("metadata", "name"), 253, 254, "dns"),
    ("Service", ("metadata", "labels", "app"), 63, 64, "dns"),
    ("Service", ("spec", "selector", "app"), 63, 64, "dns"),
    ("Service", ("metadata", "annotations", "note"), limits.MAX_ANNOTATIONS_BYTES - 64,
     limits.MAX_ANNOTATIONS_BYTES + 1, "text"),
    ("EndpointSlice", ("endpoints", 0, "zone"), limits.MAX_STRING_LENGTH,
     limits.MAX_STRING_LENGTH + 1, "dns"),
    ("EndpointSlice", ("endpoints", 0, "hostname"), 63, 64, "dns"),
    ("EndpointSlice", ("endpoints", 0, "nodeName"), 253, 254, "dns"),
    ("EndpointSlice", ("endpoints", 0, "targetRef", "name"), 253, limits.MAX_STRING_LENGTH + 1,
     "dns"),
    ("Service", ("spec", "ports", 0, "appProtocol"), 63, limits.MAX_STRING_LENGTH + 1, "dns"),
    ("Pod", ("metadata", "name"), 253, 254, "dns"),
)  # fmt: skip


def _filler(length: int, style: str) -> str:
    if style == "text":
        return ("lorem ipsum " * (length // 12 + 1))[:length]
    body = "a" * length
    return ("z" + body[1:]) if style == "dns1035" else body


def long_string(ctx: Context) -> Draft:
    kind, path, longest, too_long, style = ctx.rng.choice(LONG_FIELDS)
    size = ctx.rng.choice((longest, too_long, 10_000, 100_000, 300_000, 1_000_000, 2_500_000))
    if size > 300_000 and ctx.rng.random() < 0.6:
        size = ctx.rng.choice((too_long, 10_000))  # megabytes stay rare
    size = max(size, too_long) if size > longest else size
    expect = Expect.ACCEPT if size <= longest else Expect.REJECT
    value = Raw(_filler(size, style))
    on_identity = path in IDENTITY

    def mutate(document: dict[str, Any]) -> str:
        here = _kind_of(document)
        if here == kind:
            set_at(document, path, value)
            return f"{kind} {_show_path(path)} of {size:,} characters"
        # Over the 256 KiB of annotations: rejected, identity kept.
        size_over = limits.MAX_ANNOTATIONS_BYTES + 1
        set_at(document, ("metadata", "annotations", "note"), Raw(_filler(size_over, "text")))
        return f"{here} metadata.annotations.note of {size_over:,} characters"

    return _doc_draft(ctx, expect, mutate, kind=kind, in_good_file=not on_identity)


UNICODE_VALUES: tuple[tuple[str, str, bool], ...] = (
    # YAML double-quoted text, what it is, whether Kubernetes allows it in free-form text
    ('"h\\xE9llo \\u2603 \\U0001F600"', "non-ASCII text", True),
    ('"rtl \\u202E override"', "a bidi override", True),
    ('"line\\nbreak"', "a newline", True),
    ('"x\\uD800y"', "a lone high surrogate", False),
    ('"x\\uDFFFy"', "a lone low surrogate", False),
    ('"\\uD83D\\uDE00"', "an escaped surrogate pair", False),
    ('"a\\0b"', "NUL", False),
    ('"bell\\a"', "a control character", False),
    ('"\\e[31mred\\e[0m"', "an ANSI escape", False),
    ('"del\\x7F"', "DEL", False),
    ('"\\uFEFFbom"', "a BOM inside", True),
    ('"\\u2028sep"', "a line separator", True),
)

UNICODE_FIELDS: tuple[tuple[str, Path, bool], ...] = (
    # kind, field, whether free-form text (else a DNS name or label value, ASCII only)
    ("Service", ("metadata", "name"), False),
    ("Service", ("metadata", "labels", "app"), False),
    ("Service", ("spec", "selector", "app"), False),
    ("Service", ("spec", "ports", 0, "name"), False),
    ("Service", ("spec", "ports", 0, "appProtocol"), False),
    ("Service", ("metadata", "annotations", "note"), True),
    ("EndpointSlice", ("metadata", "name"), False),
    ("EndpointSlice", ("endpoints", 0, "zone"), True),
    ("EndpointSlice", ("endpoints", 0, "hostname"), False),
    ("EndpointSlice", ("endpoints", 0, "nodeName"), False),
    ("EndpointSlice", ("endpoints", 0, "targetRef", "name"), True),
    ("Pod", ("spec", "serviceAccountName"), False),
    ("Pod", ("metadata", "labels", "app"), False),
)


def unicode_text(ctx: Context) -> Draft:
    text, what, allowed = ctx.rng.choice(UNICODE_VALUES)
    kind, path, free_form = ctx.rng.choice(UNICODE_FIELDS)
    if not free_form:
        expect = Expect.REJECT
    elif not allowed:
        # Strings protobuf cannot carry (surrogates) must go; NUL and control
        # characters in free text are the control plane's call.
        expect = Expect.REJECT if "surrogate" in what else Expect.EITHER
    else:
        expect = Expect.ACCEPT if path[-1] == "note" else Expect.EITHER

    def mutate(document: dict[str, Any]) -> str:
        here = _kind_of(document)
        # A good file's document of another kind: break an ASCII-only field (a label value).
        where = path if here == kind else ("metadata", "labels", "app")
        set_at(document, where, Raw(text))
        return f"{what} in {here} {_show_path(where)}"

    good = expect is Expect.REJECT and path not in IDENTITY
    return _doc_draft(ctx, expect, mutate, kind=kind, in_good_file=good)


INVALID_BYTES = (
    (b"\xff\xfe", "0xFF 0xFE"), (b"\xc0\xaf", "an overlong encoding"),
    (b"\xed\xa0\x80", "an encoded surrogate (CESU-8)"), (b"z\xf4ne", "Latin-1"),
    (b"\xe2\x82", "a truncated sequence"), (b"\x80", "a lone continuation byte"),
)  # fmt: skip


def invalid_utf8(ctx: Context) -> Draft:
    raw, what = ctx.rng.choice(INVALID_BYTES)
    where = ctx.rng.choice(("value", "comment", "end"))
    target = ctx.good_target(0.3)
    if target is None:
        data, suffix = render([ctx.base()]), ""
    else:
        data, suffix = target[0].data(), f" (in {target[0].name})"
    if where == "value":
        data = data.replace(b"name: ", b"name: x" + raw, 1)
    elif where == "comment":
        data = b"# " + raw + b"\n" + data
    else:
        data = data + raw
    return Draft(
        f"{what} in a {where}{suffix}", data, Expect.REJECT,
        target=target[0].name if target else None,
    )  # fmt: skip


def encodings(ctx: Context) -> Draft:
    """Valid documents in other encodings: a UTF-8 BOM is YAML, UTF-16 is a maybe."""
    data = render([ctx.base("Service")])
    choice = ctx.rng.choice(("utf-8-bom", "utf-16-le", "utf-16-be", "raw-nul", "raw-control"))
    if choice == "utf-8-bom":
        return Draft("UTF-8 with a BOM", b"\xef\xbb\xbf" + data, Expect.ACCEPT)
    if choice == "utf-16-le":
        return Draft("UTF-16 LE with a BOM", b"\xff\xfe" + data.decode().encode("utf-16-le"),
                     Expect.EITHER)  # fmt: skip
    if choice == "utf-16-be":
        return Draft("UTF-16 BE with a BOM", b"\xfe\xff" + data.decode().encode("utf-16-be"),
                     Expect.EITHER)  # fmt: skip
    byte = b"\x00" if choice == "raw-nul" else b"\x07"
    return Draft(f"a raw {byte!r} in a plain scalar", data.replace(b"fuzz", b"fu" + byte + b"zz"),
                 Expect.REJECT)  # fmt: skip


def collision(ctx: Context) -> Draft:
    choice = ctx.rng.choice(
        ("good-object", "twice-in-file", "duplicate-port-name", "duplicate-port-number",
         "unnamed-ports", "duplicate-slice-port", "shared-cluster-ip", "same-name-other-ns")
    )  # fmt: skip
    if choice == "good-object" and ctx.good:
        good = ctx.rng.choice(ctx.good)
        document = copy.deepcopy(ctx.rng.choice(good.documents))
        if document["kind"] == "Service":
            document["spec"]["ports"][0]["port"] = ctx.rng.randint(1, 65535)
        elif document["kind"] == "EndpointSlice":
            document["endpoints"][0]["addresses"] = [f"{FUZZ_IP_PREFIX}1"]
        return Draft(f"redefines {document['kind']} {document['metadata']['name']} of "
                     f"{good.name}", render([document]), Expect.REJECT)  # fmt: skip
    if choice == "twice-in-file":
        document = ctx.base()
        again = copy.deepcopy(document)
        if again["kind"] == "Service":
            again["spec"]["ports"][0]["port"] = again["spec"]["ports"][0]["port"] % 65535 + 1
        return Draft("the same object twice in one file", render([document, again]), Expect.REJECT)
    if choice == "shared-cluster-ip":
        first, second = service(ctx.name, 8080), service(f"{ctx.name}-b", 8080)
        for document in (first, second):
            document["spec"]["clusterIP"] = "127.0.89.250"
        return Draft("two Services with one cluster IP", render([first, second]), Expect.EITHER)
    if choice == "same-name-other-ns" and ctx.good:
        document = copy.deepcopy(ctx.rng.choice(ctx.good).documents[0])
        document["metadata"]["namespace"] = f"fz-ns{ctx.index}"
        return Draft("a good object's name in another namespace", render([document]),
                     Expect.ACCEPT)  # fmt: skip
    document = service(ctx.name, 8080)
    ports = document["spec"]["ports"]
    if choice == "duplicate-port-name":
        ports.append({**ports[0], "port": 8081, "targetPort": 8081})
    elif choice == "duplicate-port-number":
        ports.append({**ports[0], "name": "http-b"})
    elif choice == "unnamed-ports":
        ports[0].pop("name")
        ports.append({"port": 8081})
    else:
        document = endpoint_slice(f"{ctx.name}-slice", ctx.name, [f"{FUZZ_IP_PREFIX}2"], 80)
        document["ports"].append({"name": "http", "port": 81, "protocol": "TCP"})
    return Draft(choice.replace("-", " "), render([document]), Expect.REJECT)


NEAR_MISSES: tuple[tuple[str, str, str], ...] = (
    # the kind it means, apiVersion, kind as written
    ("Service", "v1", "Services"), ("Service", "v1", "Service "), ("Service", "v1", "service"),
    ("Service", "v1", " Service"), ("Service", "apps/v1", "Service"), ("Service", "V1", "Service"),
    ("Service", "v1 ", "Service"), ("Service", "v2", "Service"),
    ("Service", "discovery.k8s.io/v1", "Service"), ("Service", "v1", "Servcie"),
    ("EndpointSlice", "discovery.k8s.io/v1", "endpointslice"),
    ("EndpointSlice", "discovery.k8s.io/v1", "EndpointSlices"),
    ("EndpointSlice", "discovery.k8s.io/v1", "Endpointslice"),
    ("EndpointSlice", "discovery.k8s.io/v1beta1", "EndpointSlice"),
    ("EndpointSlice", "v1", "EndpointSlice"), ("EndpointSlice", "discovery/v1", "EndpointSlice"),
    ("Pod", "v1", "Pods"), ("Pod", "v1", "pod"), ("Pod", "apps/v1", "Pod"),
)  # fmt: skip
OTHER_KINDS = (("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Endpoints"),
               ("gateway.networking.k8s.io/v1", "HTTPRoute"), ("v1", "List"))  # fmt: skip


def kind_near_miss(ctx: Context) -> Draft:
    if ctx.rng.random() < 0.15:
        api_version, kind = ctx.rng.choice(OTHER_KINDS)
        document = {"apiVersion": api_version, "kind": kind, "metadata": {"name": ctx.name}}
        if kind == "List":
            document["items"] = [None, "text", {"kind": "Service"}]
            return Draft("a List of junk items", render([document]), Expect.REJECT)
        return Draft(f"another kind: {api_version}/{kind}", render([document]), Expect.EITHER)
    meant, api_version, kind = ctx.rng.choice(NEAR_MISSES)
    document = ctx.base(meant)
    document["apiVersion"], document["kind"] = api_version, kind
    return Draft(f"near miss: apiVersion {api_version!r} kind {kind!r}", render([document]),
                 Expect.REJECT)  # fmt: skip


DUPLICATE_KEYS: tuple[tuple[str, str, str], ...] = (
    # what, line to find (regex, first match), line inserted after it (same indentation)
    ("kind given twice (other value)", r"^kind: .*$", "kind: ConfigMap"),
    ("kind given twice (same value)", r"^kind: .*$", "SAME"),
    ("metadata.name given twice", r"^  name: .*$", "  name: other-name"),
    ("a port's port given twice", r"^(\s+)port: .*$", "\\1port: 9999"),
    ("a label given twice", r"^(\s+)app: .*$", "\\1app: other"),
    ("apiVersion given twice", r"^apiVersion: .*$", "apiVersion: v2"),
)


def duplicate_key(ctx: Context) -> Draft:
    what, pattern, line = ctx.rng.choice(DUPLICATE_KEYS)
    target = ctx.good_target(0.3) if "name" not in what and "kind" not in what else None
    documents = [ctx.base("Service")] if target is None else list(target[0].documents)
    position = 0 if target is None else target[1]
    text = render(documents[position : position + 1]).decode()
    match = re.search(pattern, text, flags=re.MULTILINE)
    if match is None:  # e.g. a slice has no `app:` label
        match = re.search(r"^kind: .*$", text, flags=re.MULTILINE)
        line = "SAME"
        assert match is not None
    inserted = match.group(0) if line == "SAME" else match.expand(line)
    text = text[: match.end()] + "\n" + inserted + text[match.end() :]
    parts = [render([d]).decode() for d in documents]
    parts[position] = text
    suffix = f" (in {target[0].name})" if target else ""
    return Draft(what + suffix, "---\n".join(parts).encode(), Expect.REJECT,
                 target=target[0].name if target else None)  # fmt: skip


YAML11: tuple[tuple[str, str, Expect], ...] = (
    # field, raw value, expectation (Kubernetes reads YAML 1.2-ish via go-yaml)
    ("port", "1:20", Expect.REJECT), ("port", "190:20:30", Expect.REJECT),
    ("targetPort", "1:20", Expect.REJECT), ("port", ".inf", Expect.REJECT),
    ("port", "0x50", Expect.EITHER), ("port", "0o120", Expect.EITHER),
    ("port", "0120", Expect.EITHER), ("port", "8_080", Expect.EITHER),
    ("port", "0b1010000", Expect.EITHER), ("port", "+80", Expect.EITHER),
    ("port", "!!str 80", Expect.REJECT), ("port", "!!int '80'", Expect.EITHER),
    ("port", "!!float 80", Expect.EITHER), ("name", "1:20", Expect.REJECT),
    ("name", "no", Expect.REJECT), ("name", "2024-01-01", Expect.REJECT),
    ("name", "!!binary aGVsbG8=", Expect.REJECT),
    ("name", "!!python/name:os.system", Expect.REJECT),
    ("name", "!custom tag", Expect.REJECT), ("app", "1:20", Expect.REJECT),
    ("app", "on", Expect.REJECT), ("app", "1.10", Expect.REJECT),
    ("app", "!!set {a, b}", Expect.REJECT), ("app", "!!omap [a: 1]", Expect.REJECT),
)  # fmt: skip


def yaml11(ctx: Context) -> Draft:
    field, raw, expect = ctx.rng.choice(YAML11)
    paths: dict[str, Path] = {
        "port": ("spec", "ports", 0, "port"), "targetPort": ("spec", "ports", 0, "targetPort"),
        "name": ("metadata", "name"), "app": ("spec", "selector", "app"),
    }  # fmt: skip

    def mutate(document: dict[str, Any]) -> str:
        if _kind_of(document) == "Service":
            set_at(document, paths[field], Raw(raw))
            return f"{field}: {raw}"
        set_at(document, ("ports", 0, "port"), Raw("1:20"))  # a good file's slice
        return "EndpointSlice ports[0].port: 1:20"

    in_good = field != "name" and expect is Expect.REJECT
    return _doc_draft(ctx, expect, mutate, kind="Service", in_good_file=in_good)


def null_document(ctx: Context) -> Draft:
    valid = render([ctx.base()]).decode()
    choices: tuple[tuple[str, str, Expect], ...] = (
        ("an empty file", "", Expect.EITHER), ("only ---", "---\n", Expect.EITHER),
        ("null", "null\n", Expect.EITHER), ("~", "--- ~\n", Expect.EITHER),
        ("only comments", "# nothing\n# here\n", Expect.EITHER),
        ("--- and ...", "---\n...\n---\n", Expect.EITHER),
        ("nulls around a valid object", f"--- null\n---\n{valid}---\n~\n", Expect.ACCEPT),
        ("a top-level scalar", "hello\n", Expect.REJECT),
        ("a top-level list", "- 1\n- 2\n", Expect.REJECT),
        ("a top-level number", "42\n", Expect.REJECT),
        ("an empty mapping", "{}\n", Expect.REJECT),
        ("a mapping with a null kind", "kind: null\napiVersion: v1\n", Expect.REJECT),
        ("broken YAML", "apiVersion: v1\nkind: Service\n  bad: [indent\n", Expect.REJECT),
        ("an unclosed quote", 'kind: "Service\n', Expect.REJECT),
        ("tabs for indentation", "kind: Service\nmetadata:\n\tname: x\n", Expect.REJECT),
    )  # fmt: skip
    what, text, expect = ctx.rng.choice(choices)
    return Draft(what, text.encode(), expect)


def deep_nesting(ctx: Context) -> Draft:
    depth = ctx.rng.choice((30, 65, 100, 999, 1000, 1001, 5000, 100_000))
    style = ctx.rng.choice(("flow-list", "flow-map", "block"))
    if style == "block":
        depth = min(depth, 1200)  # block nesting grows quadratically in bytes
    where = ctx.rng.choice(("status", "annotation", "unknown-field"))
    expect = (
        Expect.REJECT if depth > limits.MAX_YAML_DEPTH or where != "status" else (Expect.EITHER)
    )
    document = ctx.base("Service")
    if style == "block":
        nested = "".join(f"{'  ' * (i + 1)}a:\n" for i in range(depth)) + "  " * (depth + 1) + "x\n"
        key = {"status": "status", "annotation": "x-nested", "unknown-field": "x-nested"}[where]
        return Draft(f"{depth}-deep block mappings under {key}",
                     render([document], suffixes=[f"{key}:\n{nested}"]), expect)  # fmt: skip
    raw = ("[" * depth + "]" * depth) if style == "flow-list" else ("{a: " * depth + "}" * depth)
    if where == "status":
        document["status"] = Raw(raw)
    elif where == "annotation":
        document["metadata"]["annotations"]["note"] = Raw(raw)
    else:
        document["spec"]["x-nested"] = Raw(raw)
    return Draft(f"{depth}-deep {style} in {where}", render([document]), expect)


def _many_endpoints(ctx: Context, count: int) -> dict[str, Any]:
    addresses = [f"127.{88 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(count)]
    return endpoint_slice(f"{ctx.name}-slice", ctx.name, addresses, 8080)


def huge_document(ctx: Context) -> Draft:
    choice = ctx.rng.choice(
        ("1000-endpoints", "1001-endpoints", "101-slice-ports", "100-slice-ports",
         "1001-service-ports", "150-service-ports", "10001-documents", "300-documents",
         "2mb-slice", "2mb-annotation", "17mb-file")
    )  # fmt: skip
    if choice in ("2mb-slice", "17mb-file") and ctx.rng.random() < 0.5:
        choice = "1001-endpoints"  # the slowest inputs stay rare
    if choice in ("1000-endpoints", "1001-endpoints"):
        count = int(choice.split("-")[0])
        expect = Expect.ACCEPT if count <= limits.MAX_ENDPOINTS_PER_SLICE else Expect.REJECT
        return Draft(f"{count} endpoints", render([_many_endpoints(ctx, count)]), expect)
    if choice == "2mb-slice":
        document = _many_endpoints(ctx, 12_000)
        return Draft("a 2 MB EndpointSlice (12,000 endpoints)", render([document]), Expect.REJECT)
    if choice.endswith("slice-ports"):
        count = int(choice.split("-")[0])
        document = _many_endpoints(ctx, 1)
        document["ports"] = [
            {"name": f"p{i}", "port": 1000 + i, "protocol": "TCP"} for i in range(count)
        ]
        expect = Expect.ACCEPT if count <= limits.MAX_PORTS_PER_SLICE else Expect.REJECT
        return Draft(f"{count} slice ports", render([document]), expect)
    if choice.endswith("service-ports"):
        count = int(choice.split("-")[0])
        document = service(ctx.name, 1000)
        document["spec"]["ports"] = [{"name": f"http-{i}", "port": 1000 + i} for i in range(count)]
        expect = Expect.ACCEPT if count <= limits.MAX_SERVICE_PORTS else Expect.REJECT
        return Draft(f"{count} Service ports", render([document]), expect)
    if choice == "10001-documents":
        count = limits.MAX_DOCUMENTS_PER_FILE + 1
        text = "".join(
            f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}}}\n"
            for i in range(count)
        )
        return Draft(f"{count:,} documents in one file", text.encode(), Expect.REJECT)
    if choice == "300-documents":
        documents = [service(f"{ctx.name}-{i}", 8080) for i in range(300)]
        return Draft("300 Services in one file", render(documents), Expect.ACCEPT)
    if choice == "2mb-annotation":
        document = ctx.base("Service")
        document["metadata"]["annotations"]["note"] = Raw("x" * 2_000_000)
        return Draft("a 2 MB annotation", render([document]), Expect.REJECT)
    size = limits.MAX_FILE_BYTES + 1024 * 1024
    head = render([ctx.base("Service")])
    padding = b"# " + b"x" * 1000 + b"\n"
    data = head + padding * ((size - len(head)) // len(padding) + 1)
    return Draft(f"a {len(data) / 2**20:.0f} MiB file (comments)", data, Expect.REJECT)


def _bomb(levels: int, width: int) -> str:
    parts = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        parts.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "{" + ", ".join(parts) + "}"


def alias_bomb(ctx: Context) -> Draft:
    levels, width = ctx.rng.choice(((9, 9), (6, 10), (12, 4), (3, 3)))
    nodes = width**levels
    where = ctx.rng.choice(("status", "annotation", "unknown-field", "labels"))
    document = ctx.base("Service")
    if ctx.rng.random() < 0.15:
        document["metadata"]["labels"] = Raw("&labels {app: " + ctx.name + "}")
        document["spec"]["selector"] = Raw("*labels")
        return Draft("a small, valid alias (labels reused as selector)", render([document]),
                     Expect.ACCEPT)  # fmt: skip
    if ctx.rng.random() < 0.2:
        choice = ctx.rng.choice(("recursive", "undefined"))
        raw = "&loop {a: [*loop]}" if choice == "recursive" else "*nowhere"
        document[ctx.rng.choice(("status", "x-alias"))] = Raw(raw)
        return Draft(f"a {choice} alias ({raw})", render([document]), Expect.REJECT)
    bomb = Raw(_bomb(levels, width))
    if where == "status":
        document["status"] = bomb
    elif where == "annotation":
        document["metadata"]["annotations"]["note"] = bomb
    elif where == "labels":
        document["metadata"]["labels"]["app"] = bomb
    else:
        document["spec"]["x-bomb"] = bomb
    expect = (
        Expect.REJECT
        if nodes > limits.MAX_ALIAS_EXPANSION or where != "status"
        else (Expect.EITHER)
    )
    return Draft(f"alias bomb {width}^{levels} = {nodes:,} nodes in {where}", render([document]),
                 expect)  # fmt: skip


def bad_file_name(ctx: Context) -> Draft:
    data = render([ctx.base("Service")])
    choice = ctx.rng.choice(
        ("not-utf8", "not-utf8", "newline", "long", "unicode", "upper-suffix", "backup")
    )  # fmt: skip
    tails: dict[str, tuple[bytes, Expect]] = {
        "not-utf8": (b"\xff\xfe.yaml", Expect.REJECT),
        "newline": (b"a\nb.yaml", Expect.EITHER),
        "long": (b"n" * 236 + b".yaml", Expect.ACCEPT),  # 248 bytes: staging adds 5
        "unicode": ("é ☃ 😀.yaml".encode(), Expect.ACCEPT),
        "upper-suffix": (b"x.YAML", Expect.EITHER),
        "backup": (b"x.yaml~", Expect.EITHER),
    }
    tail, expect = tails[choice]
    if choice == "not-utf8" and ctx.rng.random() < 0.5:
        tail = b"\x80" + bytes([ctx.rng.randint(0xC0, 0xFF)]) + b".yml"
    return Draft(f"file name: {choice} ({tail!r})", data, expect, tail=tail)


def special_file(ctx: Context) -> Draft:
    choice = ctx.rng.choice(("fifo", "symlink-loop", "dangling-symlink", "directory"))
    expect = {"fifo": Expect.REJECT, "symlink-loop": Expect.REJECT,
              "dangling-symlink": Expect.EITHER, "directory": Expect.ACCEPT}[choice]  # fmt: skip
    data = render([ctx.base("Service")]) if choice == "directory" else b""
    return Draft(f"special file: {choice}", data, expect, special=choice)


Category = Callable[[Context], Draft]

CATEGORIES: tuple[tuple[str, int, Category], ...] = (
    ("wrong-type", 14, wrong_type),
    ("missing-field", 8, missing_field),
    ("out-of-range", 6, out_of_range),
    ("huge-integer", 5, huge_integer),
    ("invalid-ip", 7, bad_ip),
    ("other-ip", 2, valid_ip),
    ("long-string", 7, long_string),
    ("unicode", 9, unicode_text),
    ("invalid-utf8", 5, invalid_utf8),
    ("encoding", 2, encodings),
    ("collision", 6, collision),
    ("kind-near-miss", 6, kind_near_miss),
    ("duplicate-key", 5, duplicate_key),
    ("yaml-1.1", 6, yaml11),
    ("null-document", 4, null_document),
    ("deep-nesting", 3, deep_nesting),
    ("huge-document", 2, huge_document),
    ("alias-bomb", 3, alias_bomb),
    ("bad-file-name", 3, bad_file_name),
    ("special-file", 1, special_file),
)


class ManifestMutator:
    """Mutations from a seed: the same seed and good files always give the same corpus."""

    def __init__(self, seed: int, good: Sequence[GoodFile] = ()) -> None:
        self.seed = seed
        self.good = tuple(good)
        self._names = [name for name, _, _ in CATEGORIES]
        self._weights = [weight for _, weight, _ in CATEGORIES]
        self._makers = {name: make for name, _, make in CATEGORIES}

    def mutation(self, index: int, category: str | None = None) -> Mutation:
        """The mutation at `index` (deterministic: its own random stream per index)."""
        rng = random.Random(f"{self.seed}:{index}")
        name = category or rng.choices(self._names, self._weights)[0]
        draft = self._makers[name](Context(rng, index, self.good))
        return Mutation(
            index, name, draft.description, draft.data, draft.expect,
            tail=draft.tail, target=draft.target, special=draft.special,
        )  # fmt: skip

    def random(self, count: int, start: int = 0) -> Iterator[Mutation]:
        for index in range(start, start + count):
            yield self.mutation(index)

    def corpus(self, budget: int) -> Iterator[Mutation]:
        """The regression cases, then `budget` random mutations."""
        found = regressions(self.good)
        yield from found
        yield from self.random(budget, start=len(found))


# -- regression cases: each crash, hang or silent drop found, kept as a fixed input --------


def _good_slice(good: Sequence[GoodFile]) -> tuple[GoodFile, int] | None:
    for file in good:
        for position, document in enumerate(file.documents):
            if document.get("kind") == "EndpointSlice":
                return file, position
    return None


def regressions(good: Sequence[GoodFile] = ()) -> list[Mutation]:
    """The fixed cases, indices 0..N-1; with `good`, also those that break a good file."""
    surrogate_zone = endpoint_slice("fz-zone-slice", "fz-zone", [f"{FUZZ_IP_PREFIX}3"], 8080)
    surrogate_zone["endpoints"][0]["zone"] = Raw('"x\\uD800y"')
    zone_service = service("fz-zone", 8080)
    cases: list[tuple[str, str, bytes, Expect, bytes]] = [
        ("unicode", "issue 6: a lone surrogate in an EndpointSlice zone crashed translation",
         render([zone_service, surrogate_zone]), Expect.REJECT, b".yaml"),
        ("huge-integer", "issue 6: a 5,000-digit port was an 'unexpected failure' (traceback)",
         b"apiVersion: v1\nkind: Service\nmetadata: {name: fz-digits}\nspec:\n  ports:\n"
         b"  - {name: http, port: " + b"9" * 5000 + b"}\n", Expect.REJECT, b".yaml"),
        ("kind-near-miss", "issue 6: kind 'Services' was dropped silently",
         b"apiVersion: v1\nkind: Services\nmetadata: {name: fz-services}\nspec:\n  ports:\n"
         b"  - {name: http, port: 80}\n", Expect.REJECT, b".yaml"),
        ("kind-near-miss", "issue 6: kind 'Service ' (trailing space) was dropped silently",
         b"apiVersion: v1\nkind: 'Service '\nmetadata: {name: fz-space}\nspec:\n  ports:\n"
         b"  - {name: http, port: 80}\n", Expect.REJECT, b".yaml"),
        ("kind-near-miss", "issue 6: kind 'endpointslice' was dropped silently",
         b"apiVersion: discovery.k8s.io/v1\nkind: endpointslice\nmetadata:\n  name: fz-lower\n"
         b"  labels: {kubernetes.io/service-name: fz-lower}\naddressType: IPv4\nendpoints: []\n",
         Expect.REJECT, b".yaml"),
        ("kind-near-miss", "issue 6: apiVersion apps/v1 on a Service was dropped silently",
         b"apiVersion: apps/v1\nkind: Service\nmetadata: {name: fz-apps}\nspec:\n  ports:\n"
         b"  - {name: http, port: 80}\n", Expect.REJECT, b".yaml"),
        ("kind-near-miss", "issue 6: apiVersion V1 on a Service was dropped silently",
         b"apiVersion: V1\nkind: Service\nmetadata: {name: fz-upper}\nspec:\n  ports:\n"
         b"  - {name: http, port: 80}\n", Expect.REJECT, b".yaml"),
        ("duplicate-key", "issue 6: a duplicated kind key was dropped silently",
         b"apiVersion: v1\nkind: Service\nkind: ConfigMap\nmetadata: {name: fz-twice}\n",
         Expect.REJECT, b".yaml"),
        ("yaml-1.1", "issue 6: port 1:20 was read as the sexagesimal 80 and accepted",
         b"apiVersion: v1\nkind: Service\nmetadata: {name: fz-sexagesimal}\nspec:\n  ports:\n"
         b"  - {name: http, port: 1:20}\n", Expect.REJECT, b".yaml"),
        ("long-string", "issue 6: a 5 MB name made a 10-million-character error",
         b"apiVersion: v1\nkind: Service\nmetadata: {name: " + b"a" * 5_000_000 + b"}\n"
         b"spec:\n  ports:\n  - {name: http, port: 80}\n", Expect.REJECT, b".yaml"),
        ("alias-bomb", "fuzz: a recursive alias was accepted silently (in a field never read)",
         b"apiVersion: v1\nkind: Service\nmetadata: {name: fz-recursive}\nspec:\n  ports:\n"
         b"  - {name: http, port: 80}\nstatus: &a {b: [*a]}\n", Expect.REJECT, b".yaml"),
        ("bad-file-name", "issue 6: a file name that is not UTF-8 made the watcher raise",
         b"apiVersion: v1\nkind: Service\nmetadata: {name: fz-bad-name}\nspec:\n  ports:\n"
         b"  - {name: http, port: 80}\n", Expect.REJECT, b"\xff\xfe.yaml"),
    ]  # fmt: skip
    found = [
        Mutation(i, category, description, data, expect, tail=tail)
        for i, (category, description, data, expect, tail) in enumerate(cases)
    ]
    found.extend(_good_file_regressions(good, len(found)))
    target = _good_slice(good)
    if target is not None:
        file, position = target
        documents = [copy.deepcopy(d) for d in file.documents]
        documents[position]["endpoints"][0]["zone"] = Raw('"x\\uD800y"')
        found.append(
            Mutation(
                len(found), "unicode",
                f"issue 6: a lone surrogate zone in a good slice ({file.name}) crashed the "
                "control plane, which then could not start again", render(documents),
                Expect.REJECT, target=file.name,
            )
        )  # fmt: skip
    return found


def _good_file_regressions(good: Sequence[GoodFile], start: int) -> list[Mutation]:
    """Cases found by this fuzzer that broke a good service's traffic (before issue 6's fixes)."""
    found: list[Mutation] = []
    for file in good:
        for position, document in enumerate(file.documents):
            kind = document.get("kind")
            if kind == "EndpointSlice" and not any(m.target == file.name for m in found):
                text = file.data().decode()
                parts = text.split("---\n")
                offset = sum(len(p) + 4 for p in parts[:position])
                head = "apiVersion: discovery.k8s.io/v1\n"
                at = text.index(head, offset) + len(head)
                data = (text[:at] + "apiVersion: v2\n" + text[at:]).encode()
                found.append(Mutation(
                    start + len(found), "duplicate-key",
                    f"fuzz: a second apiVersion key in a good slice ({file.name}) dropped it "
                    "silently: its Service answered 503", data, Expect.REJECT, target=file.name,
                ))  # fmt: skip
            if kind == "Service" and not any(m.target == file.name for m in found):
                documents = [copy.deepcopy(d) for d in file.documents]
                documents[position]["spec"]["ports"][0]["appProtocol"] = Raw(
                    '"rtl \\u202E override"'
                )
                found.append(Mutation(
                    start + len(found), "unicode",
                    f"fuzz: a free-text appProtocol on a good Service ({file.name}) was accepted "
                    "and its HTTP route vanished (404)", render(documents), Expect.REJECT,
                    target=file.name,
                ))  # fmt: skip
    return found


def _show_path(path: Path) -> str:
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", step):
            out += f".{step}" if out else step
        else:
            out += f"[{step}]"
    return out
