#!/usr/bin/env python3
"""Static checks of the Service Bus IaC (`make iac-check`).

No Azure here, and no `bicep`/`terraform` binaries (those are downloads, not
registry packages), so this parses the files with parsers from PyPI and checks
what the adapter and the plan rely on:

- servicebus.bicep parses (tree-sitter-bicep: no error nodes; pycep-parser: the
  Bicep grammar checkov uses) and declares a Standard namespace, the topic with
  duplicate detection, the `sql-writer` and `monitoring` subscriptions with
  max delivery count 5, lock PT1M and dead-lettering on expiration, optional
  sessions, and the Data Sender / Data Receiver role assignments;
- terraform/*.tf parse (python-hcl2) and say the same;
- the defaults of both agree, the emulator's Config.json has the same
  entities, and the names match the Rust constants in crates/bus/src/lib.rs.

It cannot check what only Azure Resource Manager knows (API versions,
property validity, RBAC scopes at deploy time). Prints `N passed, N failed`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def rust_u32(name: str) -> int | None:
    """A `pub const NAME: u32 = N;` of crates/bus/src/lib.rs: the one definition of a default."""
    text = (ROOT / "crates" / "bus" / "src" / "lib.rs").read_text()
    m = re.search(rf"pub const {name}: u32 = (\d+);", text)
    return int(m.group(1)) if m else None


# The delivery limit's default (= the writer's --max-attempts default).
MAX_DELIVERIES = rust_u32("DEFAULT_MAX_DELIVERIES")
SENDER = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
RECEIVER = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, bool(ok), detail))


def bicep_syntax_errors(source: bytes) -> list[str]:
    import tree_sitter_bicep
    from tree_sitter import Language, Parser

    parser = Parser(Language(tree_sitter_bicep.language()))
    tree = parser.parse(source)
    errors: list[str] = []

    def walk(node) -> None:
        if node.type == "ERROR" or node.is_missing:
            errors.append(f"{node.type} at line {node.start_point[0] + 1}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    return errors


def check_bicep() -> dict:
    from pycep import BicepParser

    path = HERE / "servicebus.bicep"
    source = path.read_bytes()
    errors = bicep_syntax_errors(source)
    check("bicep: tree-sitter syntax", not errors, "; ".join(errors))
    # The checker is not vacuous: a broken copy must be rejected.
    broken = source.replace(b"properties: subscriptionProperties\n}", b"properties: subscriptionProperties\n", 1)
    check("bicep: a broken copy is rejected", bool(bicep_syntax_errors(broken)))

    try:
        doc = BicepParser().parse(text=source.decode())
    except Exception as e:  # noqa: BLE001 - report any parser failure
        check("bicep: pycep parse", False, str(e)[:300])
        return {}
    check("bicep: pycep parse", True)
    params, variables, resources = doc["parameters"], doc["variables"], doc["resources"]

    def default(name):
        return params.get(name, {}).get("default")

    ns = resources.get("namespace", {})
    check("bicep: namespace type", ns.get("type") == "Microsoft.ServiceBus/namespaces", ns.get("type"))
    check("bicep: Standard sku", ns.get("config", {}).get("sku", {}).get("name") == "Standard")
    topic = resources.get("topic", {})
    tprops = topic.get("config", {}).get("properties", {})
    check("bicep: topic parent is the namespace", topic.get("config", {}).get("parent") == "namespace")
    check("bicep: duplicate detection on", tprops.get("requiresDuplicateDetection") is True)
    check(
        "bicep: duplicate detection window from a parameter",
        tprops.get("duplicateDetectionHistoryTimeWindow") == "duplicateDetectionWindow",
    )
    sub_props = variables.get("subscriptionProperties", {}).get("value", {})
    names = set()
    for key in ("sqlWriter", "monitoring"):
        sub = resources.get(key, {})
        cfg = sub.get("config", {})
        names.add(cfg.get("name"))
        check(f"bicep: {key} is a subscription of the topic", cfg.get("parent") == "topic" and sub.get("type", "").endswith("/subscriptions"))
        check(f"bicep: {key} uses the shared subscription properties", cfg.get("properties") == "subscriptionProperties")
    check("bicep: subscriptions sql-writer and monitoring", names == {"sql-writer", "monitoring"}, str(names))
    check(f"bicep: maxDeliveryCount from parameter, default {MAX_DELIVERIES} (mirror_bus::DEFAULT_MAX_DELIVERIES)", MAX_DELIVERIES is not None and sub_props.get("maxDeliveryCount") == "maxDeliveryCount" and default("maxDeliveryCount") == MAX_DELIVERIES)
    check("bicep: lockDuration from parameter, default PT1M", sub_props.get("lockDuration") == "lockDuration" and default("lockDuration") == "PT1M")
    check("bicep: deadLetteringOnMessageExpiration", sub_props.get("deadLetteringOnMessageExpiration") is True)
    check("bicep: requiresSession parameter, default false", sub_props.get("requiresSession") == "requiresSession" and default("requiresSession") is False)
    text = source.decode()
    check("bicep: Data Sender role id", SENDER in text)
    check("bicep: Data Receiver role id", RECEIVER in text)
    for key, scope, role in (
        ("publisherSender", "topic", "dataSenderRoleId"),
        ("writerReceiver", "sqlWriter", "dataReceiverRoleId"),
        ("monitoringReceiver", "monitoring", "dataReceiverRoleId"),
    ):
        ra = resources.get(key, {})
        body = json.dumps(ra)
        check(
            f"bicep: {key} assigns {role} on {scope}",
            ra.get("type") == "Microsoft.Authorization/roleAssignments" and f'"scope": "{scope}"' in body and role in body,
        )
    return {
        "topic": default("topicName"),
        "requires_session": default("requiresSession"),
        "duplicate_window": default("duplicateDetectionWindow"),
        "max_delivery_count": default("maxDeliveryCount"),
        "lock_duration": default("lockDuration"),
        "message_ttl": default("messageTimeToLive"),
        "subscriptions": names,
    }


def check_terraform() -> dict:
    import hcl2

    merged: dict[str, list] = {}
    for path in sorted((HERE / "terraform").glob("*.tf")):
        try:
            with path.open() as fh:
                doc = hcl2.load(fh)
        except Exception as e:  # noqa: BLE001
            check(f"terraform: parse {path.name}", False, str(e)[:300])
            continue
        check(f"terraform: parse {path.name}", True)
        for k, v in doc.items():
            merged.setdefault(k, []).extend(v if isinstance(v, list) else [v])

    def unq(v):
        return v.strip('"') if isinstance(v, str) else v

    variables = {}
    for block in merged.get("variable", []):
        for name, body in block.items():
            variables[unq(name)] = body
    resources: dict[tuple[str, str], dict] = {}
    for block in merged.get("resource", []):
        for rtype, named in block.items():
            for name, body in named.items():
                resources[(unq(rtype), unq(name))] = body

    def default(name):
        return unq(variables.get(name, {}).get("default"))

    ns = resources.get(("azurerm_servicebus_namespace", "mirror"), {})
    check("terraform: Standard namespace", unq(ns.get("sku")) == "Standard")
    topic = resources.get(("azurerm_servicebus_topic", "mirror"), {})
    check("terraform: duplicate detection on", topic.get("requires_duplicate_detection") is True)
    check("terraform: duplicate window from a variable", "var.duplicate_detection_window" in str(topic.get("duplicate_detection_history_time_window")))
    sub = resources.get(("azurerm_servicebus_subscription", "mirror"), {})
    check(f"terraform: max_delivery_count from a variable, default {MAX_DELIVERIES} (mirror_bus::DEFAULT_MAX_DELIVERIES)", MAX_DELIVERIES is not None and "var.max_delivery_count" in str(sub.get("max_delivery_count")) and default("max_delivery_count") == MAX_DELIVERIES)
    check("terraform: lock_duration from a variable, default PT1M", "var.lock_duration" in str(sub.get("lock_duration")) and default("lock_duration") == "PT1M")
    check("terraform: dead_lettering_on_message_expiration", sub.get("dead_lettering_on_message_expiration") is True)
    check("terraform: requires_session variable, default false", "var.requires_session" in str(sub.get("requires_session")) and default("requires_session") is False)
    locals_text = json.dumps(merged.get("locals", []))
    names = set(re.findall(r'\\"(sql-writer|monitoring)\\"', locals_text)) or set(re.findall(r'"(sql-writer|monitoring)"', locals_text))
    check("terraform: subscriptions sql-writer and monitoring", names == {"sql-writer", "monitoring"}, str(names))
    check("terraform: Data Sender role id", SENDER in locals_text)
    check("terraform: Data Receiver role id", RECEIVER in locals_text)
    for name, scope, role in (
        ("publisher_sender", "azurerm_servicebus_topic.mirror.id", "data_sender_role"),
        ("writer_receiver", 'azurerm_servicebus_subscription.mirror["sql-writer"].id', "data_receiver_role"),
        ("monitoring_receiver", 'azurerm_servicebus_subscription.mirror["monitoring"].id', "data_receiver_role"),
    ):
        ra = resources.get(("azurerm_role_assignment", name), {})
        check(
            f"terraform: {name} assigns {role} on the right scope",
            scope in str(ra.get("scope")).replace('\\"', '"') and role in str(ra.get("role_definition_id")),
            f"{ra.get('scope')} {ra.get('role_definition_id')}",
        )
    return {
        "topic": default("topic_name"),
        "requires_session": default("requires_session"),
        "duplicate_window": default("duplicate_detection_window"),
        "max_delivery_count": default("max_delivery_count"),
        "lock_duration": default("lock_duration"),
        "message_ttl": default("message_ttl"),
        "subscriptions": names,
    }


def check_emulator_and_rust(expected: dict) -> None:
    config = json.loads((HERE / "emulator" / "Config.json").read_text())
    ns = config["UserConfig"]["Namespaces"][0]
    topics = {t["Name"]: t for t in ns.get("Topics", [])}
    topic = topics.get(expected["topic"])
    check("emulator: has the topic", topic is not None, str(list(topics)))
    if topic:
        check("emulator: duplicate detection on", topic["Properties"].get("RequiresDuplicateDetection") is True)
        subs = {s["Name"]: s["Properties"] for s in topic.get("Subscriptions", [])}
        check("emulator: same subscriptions", set(subs) == expected["subscriptions"], str(set(subs)))
        for name, props in subs.items():
            check(f"emulator: {name} max delivery count", props.get("MaxDeliveryCount") == expected["max_delivery_count"])
            check(f"emulator: {name} dead-letters on expiration", props.get("DeadLetteringOnMessageExpiration") is True)
            check(f"emulator: {name} sessions as the IaC default", props.get("RequiresSession") == expected["requires_session"])
    lib = (ROOT / "crates" / "bus" / "src" / "lib.rs").read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', lib))
    check("rust: TOPIC matches the IaC", consts.get("TOPIC") == expected["topic"], str(consts))
    check(
        "rust: subscription names match the IaC",
        {consts.get("SQL_WRITER_SUBSCRIPTION"), consts.get("MONITORING_SUBSCRIPTION")} == expected["subscriptions"],
    )


def main() -> int:
    bicep = check_bicep()
    terraform = check_terraform()
    if bicep and terraform:
        for key in ("topic", "requires_session", "duplicate_window", "max_delivery_count", "lock_duration", "message_ttl", "subscriptions"):
            check(f"bicep and terraform agree on {key}", bicep[key] == terraform[key], f"{bicep[key]!r} vs {terraform[key]!r}")
        check_emulator_and_rust(bicep)
    failed = [r for r in results if not r[1]]
    for name, ok, detail in results:
        if not ok or "-v" in sys.argv:
            print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
