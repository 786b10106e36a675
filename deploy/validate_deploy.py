#!/usr/bin/env python3
"""Schema checks of the deployment definitions (`make iac-check`).

No cluster, no Azure and no Docker engine here. What is checked, with
validators from PyPI (pinned in deploy/requirements-validate-deploy.txt):

- deploy/k8s/*.yaml: every built-in resource against the Kubernetes 1.37 JSON
  schemas that `kubernetes-validate` ships, strictly (unknown fields fail);
  KEDA resources against the pinned deploy/schemas/keda-v1alpha1.schema.json
  (`jsonschema`); any other kind fails.
- deploy/azure/containerapps/*.yaml: the pinned Container Apps schema
  (deploy/schemas/containerapp-2024-03-01.schema.json).
- deploy/monitoring/prometheus-rules.yml: the rule-file schema, and every
  expression parsed by `promql-parser`.
- deploy/azure/alerts.bicep: parsed by tree-sitter-bicep (no error nodes) and
  its Prometheus expressions equal the rule file's.
- What the plan asks of them: probes on /healthz and /readyz and resource
  limits on every long-running container, the thresholds of every alert, KEDA
  on the `sql-writer` subscription, one publisher replica per shard, the
  scheduled jobs, non-root images; every metric a rule uses is emitted by the
  code (crates/runtime/src/telemetry.rs) and documented (docs/metrics.md).
- Each validator rejects a deliberately broken copy (so a pass means something).

Prints `N passed, N failed`; exits 1 on any failure.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
K8S_VERSION = "1.37.0"

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, bool(ok), detail))


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def schema(name: str) -> dict:
    return json.loads((HERE / "schemas" / name).read_text())


def jsonschema_errors(doc: dict, sch: dict) -> list[str]:
    import jsonschema

    v = jsonschema.Draft202012Validator(sch)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def k8s_errors(doc: dict) -> list[str]:
    import kubernetes_validate

    api = doc.get("apiVersion", "")
    if api.startswith("keda.sh/"):
        return jsonschema_errors(doc, schema("keda-v1alpha1.schema.json"))
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return []
    except kubernetes_validate.ValidationError as e:
        return [str(e.message if hasattr(e, "message") else e)]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"no schema for {api} {doc.get('kind')}: {e}"]


def rust_const(name: str) -> str:
    text = (ROOT / "crates/bus/src/lib.rs").read_text()
    m = re.search(rf'pub const {name}: &str = "([^"]+)";', text)
    return m.group(1) if m else ""


def check_k8s() -> dict[str, dict]:
    by_name: dict[str, dict] = {}
    files = sorted((HERE / "k8s").glob("*.yaml"))
    check("k8s: manifests found", len(files) >= 4, str([f.name for f in files]))
    for f in files:
        for doc in load_all(f):
            kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
            errors = k8s_errors(doc)
            check(f"k8s: {f.name} {kind}/{name} valid", not errors, "; ".join(errors)[:500])
            by_name[f"{kind}/{name}"] = doc
    # Each validator rejects a broken copy.
    dep = copy.deepcopy(by_name["Deployment/sql-writer"])
    dep["spec"]["replica"] = 1
    check("k8s: a misspelt Deployment field is rejected", bool(k8s_errors(dep)))
    so = copy.deepcopy(by_name["ScaledObject/sql-writer"])
    so["spec"]["maxReplicaCount"] = "8"
    check("k8s: a ScaledObject with a string replica count is rejected", bool(k8s_errors(so)))
    so = copy.deepcopy(by_name["ScaledObject/sql-writer"])
    so["spec"]["triggers"][0]["metadata"]["messageCount"] = 500
    check("k8s: a KEDA trigger with a non-string metadata value is rejected", bool(k8s_errors(so)))

    # Long-running containers: probes on /healthz and /readyz, limits, non-root.
    deployments = [d for k, d in by_name.items() if k.startswith("Deployment/")]
    check("k8s: sql-writer and two publisher shards", {d["metadata"]["name"] for d in deployments} == {"sql-writer", "publisher-shard-0", "publisher-shard-1"})
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        n = d["metadata"]["name"]
        check(f"k8s: {n} runs as non-root", pod.get("securityContext", {}).get("runAsNonRoot") is True)
        for c in pod["containers"]:
            check(f"k8s: {n} liveness on /healthz", c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz")
            check(f"k8s: {n} readiness on /readyz", c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz")
            lim = c.get("resources", {}).get("limits", {})
            check(f"k8s: {n} has cpu and memory limits", "cpu" in lim and "memory" in lim, str(lim))
            port = {e["name"]: e.get("value") for e in c.get("env", [])}.get("METRICS_ADDR", "")
            check(f"k8s: {n} serves health on the probed port", port.endswith(":9464"), port)
        if n.startswith("publisher"):
            check(f"k8s: {n} has one replica and never two at once", d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate")
    shards = sorted(
        {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}["PUBLISHER_SHARD_INDEX"]
        for d in deployments
        if d["metadata"]["name"].startswith("publisher")
    )
    check("k8s: publisher shards 0 and 1", shards == ["0", "1"], str(shards))
    so = by_name["ScaledObject/sql-writer"]
    trig = so["spec"]["triggers"][0]
    check("k8s: KEDA scales the sql-writer Deployment", so["spec"]["scaleTargetRef"]["name"] == "sql-writer")
    check(
        "k8s: KEDA reads the sql-writer subscription's backlog",
        trig["type"] == "azure-servicebus"
        and trig["metadata"].get("topicName") == rust_const("TOPIC")
        and trig["metadata"].get("subscriptionName") == rust_const("SQL_WRITER_SUBSCRIPTION"),
        str(trig),
    )
    cron = {k.split("/", 1)[1]: d for k, d in by_name.items() if k.startswith("CronJob/")}
    check("k8s: consistency and backfill are CronJobs", {"consistency", "backfill"} <= set(cron), str(list(cron)))
    for n, c in cron.items():
        check(f"k8s: CronJob {n} never overlaps", c["spec"].get("concurrencyPolicy") == "Forbid")
    return by_name


def check_container_apps() -> None:
    sch = schema("containerapp-2024-03-01.schema.json")
    files = sorted((HERE / "azure/containerapps").glob("*.yaml"))
    docs = {}
    for f in files:
        doc = yaml.safe_load(f.read_text())
        errors = jsonschema_errors(doc, sch)
        check(f"aca: {f.name} valid", not errors, "; ".join(errors)[:500])
        docs[doc["name"]] = doc
    broken = copy.deepcopy(docs["sql-writer"])
    broken["properties"]["template"]["scale"]["maxReplica"] = 8
    check("aca: a misspelt field is rejected", bool(jsonschema_errors(broken, sch)))
    broken = copy.deepcopy(docs["consistency"])
    del broken["properties"]["configuration"]["scheduleTriggerConfig"]
    check("aca: a scheduled job without a schedule is rejected", bool(jsonschema_errors(broken, sch)))

    w = docs["sql-writer"]["properties"]["template"]
    rule = w["scale"]["rules"][0]["custom"]
    check(
        "aca: sql-writer scaled by KEDA on the sql-writer subscription",
        rule["type"] == "azure-servicebus"
        and rule["metadata"].get("subscriptionName") == rust_const("SQL_WRITER_SUBSCRIPTION")
        and rule["metadata"].get("topicName") == rust_const("TOPIC"),
    )
    for name, doc in docs.items():
        if doc["type"] != "Microsoft.App/containerApps":
            continue
        c = doc["properties"]["template"]["containers"][0]
        paths = {p["type"]: p["httpGet"]["path"] for p in c.get("probes", [])}
        check(f"aca: {name} probes /healthz and /readyz", paths.get("Liveness") == "/healthz" and paths.get("Readiness") == "/readyz", str(paths))
        if name.startswith("publisher"):
            s = doc["properties"]["template"]["scale"]
            check(f"aca: {name} runs exactly one replica", s["minReplicas"] == 1 and s["maxReplicas"] == 1)
    jobs = {n for n, d in docs.items() if d["type"] == "Microsoft.App/jobs"}
    check("aca: consistency and backfill are scheduled jobs", jobs == {"consistency", "backfill"}, str(jobs))
    for n in jobs:
        check(f"aca: job {n} is on a schedule", docs[n]["properties"]["configuration"]["triggerType"] == "Schedule")


EXPECTED_ALERTS = {
    "MirrorBacklogHigh": ("> 1000", None),
    "MirrorDeadLettersHigh": ("> 10", None),
    "MirrorSqlDeadLetterInserted": ("> 0", None),
    "MirrorDriftHigh": ("> 0.5", None),
    "MirrorLatencyP95High": ("> 250", "15m"),
    "MirrorPublisherCheckpointStale": ("> 1500", None),
}


def check_rules() -> dict[str, str]:
    import promql_parser

    doc = yaml.safe_load((HERE / "monitoring/prometheus-rules.yml").read_text())
    sch = schema("prometheus-rules.schema.json")
    errors = jsonschema_errors(doc, sch)
    check("rules: schema", not errors, "; ".join(errors))
    broken = copy.deepcopy(doc)
    broken["groups"][0]["rules"][0]["for"] = "five minutes"
    check("rules: a bad duration is rejected", bool(jsonschema_errors(broken, sch)))
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}
    for name, r in rules.items():
        try:
            promql_parser.parse(r["expr"])
            check(f"rules: {name} parses", True)
        except Exception as e:  # noqa: BLE001 - any parser error is a failure
            check(f"rules: {name} parses", False, str(e))
    try:
        promql_parser.parse("sum(rate(mirror_events_total[5m]) >")
        check("rules: the parser rejects a broken expression", False)
    except Exception:  # noqa: BLE001
        check("rules: the parser rejects a broken expression", True)
    for name, (threshold, for_) in EXPECTED_ALERTS.items():
        r = rules.get(name)
        check(f"rules: {name} present with {threshold}", bool(r) and r["expr"].rstrip().endswith(threshold), r and r["expr"])
        if for_:
            check(f"rules: {name} holds for {for_}", bool(r) and r.get("for") == for_)
        check(f"rules: {name} links the runbook", bool(r) and "runbook.md#" in r.get("annotations", {}).get("runbook", ""))

    # Every mirror metric a rule uses is emitted by the code and documented.
    names_rs = (ROOT / "crates/runtime/src/telemetry.rs").read_text()
    emitted = set(re.findall(r'pub const [A-Z_0-9]+: &str = "([^"]+)";', names_rs))
    emitted = {n.replace(".", "_") for n in emitted}
    metrics_md = (ROOT / "docs/metrics.md").read_text()
    external = {"kube_job_status_failed", "mirror_consistency_drift_percent"}
    for r in rules.values():
        for m in set(re.findall(r"\b((?:mirror|sql_mirror|messaging|db)_[a-z_0-9]+|kube_[a-z_]+)", r["expr"])):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            check(f"rules: {m} is emitted or known", base in emitted or base in external, base)
            check(f"rules: {m} is documented", base in metrics_md, base)
    for n in emitted:
        check(f"docs: {n} in docs/metrics.md", n in metrics_md)
    return {n: r["expr"] for n, r in rules.items()}


def check_alerts_bicep(exprs: dict[str, str]) -> None:
    import tree_sitter_bicep
    from tree_sitter import Language, Parser

    text = (HERE / "azure/alerts.bicep").read_bytes()
    parser = Parser(Language(tree_sitter_bicep.language()))

    def errors(src: bytes) -> list[str]:
        out: list[str] = []

        def walk(node) -> None:
            if node.type == "ERROR" or node.is_missing:
                out.append(f"{node.type} at line {node.start_point[0] + 1}")
            for c in node.children:
                walk(c)

        walk(parser.parse(src).root_node)
        return out

    errs = errors(text)
    check("alerts.bicep: tree-sitter syntax", not errs, "; ".join(errs))
    check("alerts.bicep: a broken copy is rejected", bool(errors(text.replace(b"properties: {", b"properties: {{", 1))))
    src = text.decode()
    for metric in ("ActiveMessages", "DeadletteredMessages"):
        check(f"alerts.bicep: Service Bus {metric} alert", f"metricName: '{metric}'" in src)
    check("alerts.bicep: backlog threshold 1000", "param backlogThreshold int = 1000" in src)
    check("alerts.bicep: dead-letter threshold 10", "param deadLetterThreshold int = 10" in src)
    found = dict(re.findall(r"alert: '([A-Za-z0-9]+)'\s+expression: '([^']+)'", src))
    for name, expr in found.items():
        check(f"alerts.bicep: {name} same expression as the rule file", exprs.get(name) == expr, f"{expr} vs {exprs.get(name)}")
    check("alerts.bicep: p95 holds for 15 minutes", "for: 'PT15M'" in src)
    check(
        "alerts.bicep: every plan alert present",
        {"MirrorSqlDeadLetterInserted", "MirrorDriftHigh", "MirrorLatencyP95High", "MirrorPublisherCheckpointStale"} <= set(found),
        str(sorted(found)),
    )


def check_dockerfile() -> None:
    text = (HERE / "docker/Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)
    finals = [s for s in stages if s[1] in ("sql-writer", "publisher", "mirrorctl")]
    check("docker: one stage per job", {s[1] for s in finals} == {"sql-writer", "publisher", "mirrorctl"}, str(stages))
    check("docker: job stages derive from the non-root runtime", all(s[0] == "runtime" for s in finals))
    runtime = text.split("AS runtime", 1)[1].split("FROM", 1)[0]
    m = re.search(r"^USER\s+(\d+)", runtime, re.M)
    check("docker: runtime runs as a numeric non-root user", bool(m) and m.group(1) != "0")
    check("docker: health/metrics port exposed by the long-running jobs", text.count("EXPOSE 9464") >= 2)


def main() -> int:
    check_k8s()
    check_container_apps()
    exprs = check_rules()
    check_alerts_bicep(exprs)
    check_dockerfile()
    failed = [r for r in results if not r[1]]
    for name, ok, detail in results:
        if not ok:
            print(f"FAIL {name}: {detail}")
    print(f"deploy: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
