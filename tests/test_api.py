"""Our Hubble protos match upstream's field table, and the generated code is current."""

from __future__ import annotations

import csv

from ingest.api import generate
from ingest.api.flow import flow_pb2
from ingest.api.observer import observer_pb2
from ingest.api.relay import relay_pb2

from .helpers import CILIUM

FIELDS_TSV = CILIUM / "hubble-api-v1-fields.tsv"
# Fields upstream removed before v1.19.4 that clients still send: hubble CLIs before
# Cilium 1.16 put their field mask here (api/v1/observer/observer.proto, v1.16: "Deprecated
# in favor of top-level field_mask. This field will be removed in v1.17").
OLDER_UPSTREAM = {("observer", "GetFlowsRequest.Experimental", "field_mask"): ("field", "1")}


def upstream() -> dict[tuple[str, str, str], tuple[str, str]]:
    with open(FIELDS_TSV) as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    table = {(r["package"], r["message_or_enum"], r["name"]): (r["kind"], r["number"]) for r in rows}
    return table | OLDER_UPSTREAM


def our_definitions():
    """(package, message or enum, name) -> number, for every field and enum value we define."""
    found = {}

    def walk(package, descriptor, prefix=""):
        name = prefix + descriptor.name
        for field in descriptor.fields:
            found[(package, name, field.name)] = field.number
        for enum in descriptor.enum_types:
            for value in enum.values:
                found[(package, f"{name}.{enum.name}", value.name)] = value.number
        for nested in descriptor.nested_types:
            walk(package, nested, name + ".")

    for module, package in ((flow_pb2, "flow"), (observer_pb2, "observer"), (relay_pb2, "relay")):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            walk(package, message)
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            for value in enum.values:
                found[(package, enum.name, value.name)] = value.number
    return found


def test_every_field_and_enum_value_matches_upstream_numbers():
    reference = upstream()
    ours = our_definitions()
    assert len(ours) > 350  # the whole Flow message, not a token subset
    mismatched = {key: (number, reference.get(key)) for key, number in ours.items()
                  if reference.get(key, (None, None))[1] != str(number)}
    assert mismatched == {}


def test_package_and_method_names_are_hubbles():
    service = observer_pb2.DESCRIPTOR.services_by_name["Observer"]
    assert service.full_name == "observer.Observer"
    assert {m.name for m in service.methods} == {"GetFlows", "GetAgentEvents", "GetDebugEvents", "GetNodes",
                                                 "GetNamespaces", "ServerStatus"}
    assert flow_pb2.Flow.DESCRIPTOR.full_name == "flow.Flow"
    assert relay_pb2.NodeStatusEvent.DESCRIPTOR.full_name == "relay.NodeStatusEvent"


def test_generated_code_is_not_stale():
    assert generate.stale_files() == []
