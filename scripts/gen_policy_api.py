"""Generate the policy API from protos/: Python classes and the CRD, from one source.

    python scripts/gen_policy_api.py           # regenerate the checked-in files
    python scripts/gen_policy_api.py --check   # exit 1, with a diff, when they are stale

protoc (from grpcio-tools, a test-only dependency) writes the `_pb2.py` module and its
`.pyi` stub, and a descriptor set with source info; the CRD's OpenAPI v3 schema is built
from that descriptor set, so structure, JSON names and descriptions all come from the
`.proto` file.  The conventions it reads (comments, `+` markers, enum spelling) are stated
at the top of the `.proto` file.  The generated module is copied flat into
`xds_server/policy_api/` while keeping its proto file name, so the descriptor pool sees the
canonical path `xds_server/policy/v1alpha1/backend_policy.proto`.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.resources
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
PROTOS = REPO / "protos"
PACKAGE = "xds_server.policy.v1alpha1"
PYTHON_OUT = Path("xds_server/policy_api")

GROUP = "policy.xds-server.dev"
VERSION = "v1alpha1"


@dataclass(frozen=True)
class Api:
    """One policy kind: its .proto file, CRD names and where its CRD is written."""

    proto: str
    kind: str
    plural: str
    crd_out: Path

    @property
    def spec(self) -> str:
        return f".{PACKAGE}.{self.kind}Spec"

    @property
    def status(self) -> str:
        return f".{PACKAGE}.{self.kind}Status"


APIS = (
    Api(
        "xds_server/policy/v1alpha1/backend_policy.proto",
        "BackendPolicy",
        "backendpolicies",
        Path("manifests/crds/backendpolicy.yaml"),
    ),
    Api(
        "xds_server/policy/v1alpha1/authorization_policy.proto",
        "AuthorizationPolicy",
        "authorizationpolicies",
        Path("manifests/crds/authorizationpolicy.yaml"),
    ),
    Api(
        "xds_server/policy/v1alpha1/peer_authentication.proto",
        "PeerAuthentication",
        "peerauthentications",
        Path("manifests/crds/peerauthentication.yaml"),
    ),
    Api(
        "xds_server/policy/v1alpha1/telemetry.proto",
        "Telemetry",
        "telemetries",
        Path("manifests/crds/telemetry.yaml"),
    ),
)

# The proto3 JSON form of a Duration (seconds, up to nine fractional digits), never negative.
DURATION_PATTERN = r"^[0-9]+(\.[0-9]{1,9})?s$"
DURATION_NOTE = 'A duration in seconds with an "s" suffix, e.g. "5s" or "0.250s".'

F = descriptor_pb2.FieldDescriptorProto
SCALARS: dict[int, dict[str, Any]] = {
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    F.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    # Only in status: the proto3 JSON form of a 64-bit integer is a string.
    F.TYPE_INT64: {"type": "integer", "format": "int64"},
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
}
WELL_KNOWN: dict[str, dict[str, Any]] = {
    ".google.protobuf.Duration": {"type": "string", "pattern": DURATION_PATTERN},
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.BoolValue": SCALARS[F.TYPE_BOOL],
    ".google.protobuf.StringValue": SCALARS[F.TYPE_STRING],
    ".google.protobuf.Int32Value": SCALARS[F.TYPE_INT32],
    ".google.protobuf.UInt32Value": SCALARS[F.TYPE_UINT32],
    ".google.protobuf.DoubleValue": SCALARS[F.TYPE_DOUBLE],
    ".google.protobuf.FloatValue": SCALARS[F.TYPE_FLOAT],
}


class SchemaError(Exception):
    """The .proto file uses something the CRD schema cannot express faithfully."""


@dataclass(frozen=True)
class Doc:
    """A comment split into its description and its `+` markers."""

    description: str
    markers: dict[str, str]


def parse_comment(text: str, where: str) -> Doc:
    lines = [line.strip() for line in text.strip().splitlines()]
    markers = {}
    for line in (line for line in lines if line.startswith("+")):
        key, _, value = line[1:].partition("=")
        if key not in ("required", "minimum", "maximum", "enum", "listMapKey"):
            raise SchemaError(f"{where}: unknown marker {line!r}")
        markers[key] = value
    description = " ".join(line for line in lines if line and not line.startswith("+"))
    if not description:
        raise SchemaError(f"{where}: needs a comment (it is the CRD's description)")
    return Doc(description, markers)


class Schemas:
    """OpenAPI v3 schemas for the messages of one descriptor set."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[str, str] = {}  # full name (message, field, oneof, enum value)
        for file in files.file:
            paths = {
                tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location
            }
            for index, message in enumerate(file.message_type):
                self._index_message(f".{file.package}", message, (4, index), paths)
            for index, enum in enumerate(file.enum_type):
                self._index_enum(f".{file.package}", enum, (5, index), paths)

    def _index_message(
        self, scope: str, message: descriptor_pb2.DescriptorProto, path: tuple[int, ...],
        paths: dict[tuple[int, ...], str],
    ) -> None:  # fmt: skip
        name = f"{scope}.{message.name}"
        self.messages[name] = message
        self.comments[name] = paths.get(path, "")
        for index, field in enumerate(message.field):
            self.comments[f"{name}.{field.name}"] = paths.get((*path, 2, index), "")
        for index, oneof in enumerate(message.oneof_decl):
            self.comments[f"{name}.{oneof.name}"] = paths.get((*path, 8, index), "")
        for index, nested in enumerate(message.nested_type):
            self._index_message(name, nested, (*path, 3, index), paths)
        for index, enum in enumerate(message.enum_type):
            self._index_enum(name, enum, (*path, 4, index), paths)

    def _index_enum(
        self, scope: str, enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...],
        paths: dict[tuple[int, ...], str],
    ) -> None:  # fmt: skip
        name = f"{scope}.{enum.name}"
        self.enums[name] = enum
        self.comments[name] = paths.get(path, "")
        for index, value in enumerate(enum.value):
            self.comments[f"{name}.{value.name}"] = paths.get((*path, 2, index), "")

    def doc(self, name: str) -> Doc:
        return parse_comment(self.comments[name], name.lstrip("."))

    def message(self, name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
        if name in seen:
            raise SchemaError(f"{name}: recursive messages have no structural schema")
        message = self.messages[name]
        if message.options.map_entry:
            raise SchemaError(f"{name}: maps are not supported yet")
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in message.field:
            where = f"{name}.{field.name}"
            doc = self.doc(where)
            if field.proto3_optional:
                raise SchemaError(f"{where}: use a wrapper type rather than `optional`")
            properties[field.json_name] = self.field(field, doc, (*seen, name))
            if "required" in doc.markers:
                required.append(field.json_name)
        schema: dict[str, Any] = {"type": "object", "description": self.doc(name).description}
        if not properties:
            raise SchemaError(f"{name}: an object without properties is not structural")
        schema["properties"] = properties
        if required:
            schema["required"] = required
        rules = [self.oneof_rule(name, index) for index in range(len(message.oneof_decl))]
        rules = [rule for rule in rules if rule]
        if rules:
            schema["x-kubernetes-validations"] = rules
        return schema

    def oneof_rule(self, name: str, index: int) -> dict[str, str] | None:
        message = self.messages[name]
        oneof = message.oneof_decl[index]
        members = [
            f.json_name
            for f in message.field
            if f.HasField("oneof_index") and f.oneof_index == index and not f.proto3_optional
        ]
        if not members:
            return None  # the synthetic oneof of a proto3 `optional` field
        doc = self.doc(f"{name}.{oneof.name}")
        count = " + ".join(f"(has(self.{member}) ? 1 : 0)" for member in members)
        listed = ", ".join(members)
        if "required" in doc.markers:
            return {"rule": f"{count} == 1", "message": f"exactly one of {listed} must be set"}
        return {"rule": f"{count} <= 1", "message": f"at most one of {listed} may be set"}

    def field(
        self, field: descriptor_pb2.FieldDescriptorProto, doc: Doc, seen: tuple[str, ...]
    ) -> dict[str, Any]:
        where = f"{seen[-1]}.{field.name}"
        notes = [doc.description]
        if field.type == F.TYPE_MESSAGE and field.type_name in WELL_KNOWN:
            item = dict(WELL_KNOWN[field.type_name])
            if field.type_name == ".google.protobuf.Duration":
                notes.append(DURATION_NOTE)
        elif field.type == F.TYPE_MESSAGE and self.messages[field.type_name].options.map_entry:
            value = self.messages[field.type_name].field[1]
            if value.type == F.TYPE_MESSAGE and value.type_name not in WELL_KNOWN:
                entry = self.message(value.type_name, seen)
                del entry["description"]
            elif value.type in SCALARS:
                entry = dict(SCALARS[value.type])
            else:
                raise SchemaError(f"{where}: only maps of scalars or messages are supported")
            return {"description": doc.description, "type": "object", "additionalProperties": entry}
        elif field.type == F.TYPE_MESSAGE:
            item = self.message(field.type_name, seen)
            del item["description"]
        elif field.type == F.TYPE_ENUM:
            enum = self.enums[field.type_name]
            values = [
                v for v in enum.value if not (v.number == 0 and v.name.endswith("_UNSPECIFIED"))
            ]
            item = {"type": "string", "enum": [v.name for v in values]}
            notes.extend(
                f"{v.name}: {self.doc(f'{field.type_name}.{v.name}').description}" for v in values
            )
        elif field.type in SCALARS:
            item = dict(SCALARS[field.type])
        else:
            raise SchemaError(f"{where}: {F.Type.Name(field.type)} is not supported")
        for key in ("minimum", "maximum"):
            if key in doc.markers:
                if item["type"] not in ("integer", "number"):
                    raise SchemaError(f"{where}: +{key} on a non-numeric field")
                item[key] = int(doc.markers[key])
        if "enum" in doc.markers:
            if item["type"] != "string":
                raise SchemaError(f"{where}: +enum on a non-string field")
            item["enum"] = doc.markers["enum"].split(",")
        description = " ".join(notes)
        if field.label != F.LABEL_REPEATED:
            return {"description": description, **item}
        schema: dict[str, Any] = {"description": description, "type": "array", "items": item}
        if "listMapKey" in doc.markers:
            key = doc.markers["listMapKey"]
            if key not in item.get("required", ()):
                raise SchemaError(f"{where}: the list map key {key} must be +required")
            schema["x-kubernetes-list-type"] = "map"
            schema["x-kubernetes-list-map-keys"] = [key]
        return schema


def crd(files: descriptor_pb2.FileDescriptorSet, api: Api = APIS[0]) -> dict[str, Any]:
    schemas = Schemas(files)
    spec, status = schemas.message(api.spec), schemas.message(api.status)
    accepted = '.status.conditions[?(@.type=="Accepted")].status'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": api.kind,
                "listKind": f"{api.kind}List",
                "plural": api.plural,
                "singular": api.kind.lower(),
                "categories": ["xds-server"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Accepted", "type": "string", "jsonPath": accepted},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": spec.pop("description"),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


def generate(out: Path) -> list[Path]:
    """Write every generated file under `out` (a repository root); return their paths."""
    return [path for api in APIS for path in generate_api(out, api)]


def generate_api(out: Path, api: Api) -> list[Path]:
    """The generated files of one policy kind, under `out`."""
    include = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        descriptor_set = work / "descriptors.binpb"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTOS}",
                f"-I{include}",
                f"--python_out={work}",
                f"--pyi_out={work}",
                f"--descriptor_set_out={descriptor_set}",
                "--include_source_info",
                "--include_imports",
                api.proto,
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed ({code})")
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
        written = []
        stem = api.proto.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi"):
            generated = work / f"{stem}{suffix}"
            target = out / PYTHON_OUT / generated.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(generated.read_text())
            written.append(target)
    target = out / api.crd_out
    target.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Generated by scripts/gen_policy_api.py from protos/{api.proto}: do not edit.\n"
    body = yaml.safe_dump(crd(files, api), sort_keys=False, width=100, allow_unicode=True)
    target.write_text(header + body)
    written.append(target)
    return written


def check(root: Path) -> int:
    """0 when the generated files under `root` are what the generator writes, else 1."""
    with tempfile.TemporaryDirectory() as scratch:
        stale = False
        for fresh in generate(Path(scratch)):
            relative = fresh.relative_to(scratch)
            current = root / relative
            old = current.read_text().splitlines(keepends=True) if current.exists() else []
            new = fresh.read_text().splitlines(keepends=True)
            if old != new:
                stale = True
                sys.stdout.writelines(
                    difflib.unified_diff(old, new, f"a/{relative}", f"b/{relative}")
                )
        if stale:
            print("stale: run python scripts/gen_policy_api.py", file=sys.stderr)
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail with a diff when stale")
    parser.add_argument(
        "--root", type=Path, default=REPO, help="the tree to write or check (default: this one)"
    )
    args = parser.parse_args(argv)
    if args.check:
        return check(args.root)
    for path in generate(args.root):
        print(path.relative_to(args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
