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
- The image (no Docker engine here, so statically): the Dockerfile builds
  and copies exactly the workspace's binaries with their default features
  (publisher's `firestore`), each job stage's ENTRYPOINT is one of them,
  `.dockerignore` keeps target/ and .git out of the context, every binary
  installs the rustls provider, fixtures the image copies exist.
- The manifests against the binaries' real command lines: every
  container's image maps to a Dockerfile stage; its args (or the binary's
  arguments inside a `/bin/sh -c` wrapper) are parsed against the
  `--help` of the built binaries (target/debug, or MIRROR_BIN_DIR):
  subcommands, flags, whether a flag takes a value, positionals, required
  flags given by a flag or their env var; every env var a manifest sets is
  one the binary reads (`[env: …]` in its help) or a known external one.
  Without built binaries these checks are reported as skipped (`make test`
  builds them first).
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
    "MirrorConsistencyNotRun": ("> 93600", None),
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
    # The consistency job pushes its own gauges (crates/mirrorctl/src/consistency/metrics.rs).
    consistency_rs = (ROOT / "crates/mirrorctl/src/consistency/metrics.rs").read_text()
    names_rs += consistency_rs.split("pub mod names {", 1)[1].split("\n}\n", 1)[0]
    emitted = set(re.findall(r'pub const [A-Z_0-9]+: &str = "([^"]+)";', names_rs))
    emitted = {n.replace(".", "_") for n in emitted}
    check("rules: the consistency job's drift gauge is emitted", "mirror_consistency_drift_percent" in emitted)
    metrics_md = (ROOT / "docs/metrics.md").read_text()
    external = {"kube_job_status_failed"}
    for r in rules.values():
        for m in set(re.findall(r"\b((?:mirror|sql_mirror|messaging|db)_[a-z_0-9]+|kube_[a-z_]+)", r["expr"])):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            check(f"rules: {m} is emitted or known", base in emitted or base in external, base)
            check(f"rules: {m} is documented", base in metrics_md, base)
    for n in emitted:
        check(f"docs: {n} in docs/metrics.md", f"`{n}`" in metrics_md)
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
        {"MirrorSqlDeadLetterInserted", "MirrorDriftHigh", "MirrorLatencyP95High", "MirrorPublisherCheckpointStale", "MirrorConsistencyNotRun"} <= set(found),
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

    bins = workspace_bins()
    check("docker: the workspace has the three job binaries", set(bins) == {"sql-writer", "publisher", "mirrorctl"}, str(bins))
    build = text.split("AS build", 1)[1].split("FROM", 1)[0]
    built = set(re.findall(r"\s-p\s+([\w-]+)", build))
    check("docker: builds every workspace binary's package", built == set(bins.values()), f"{built} vs {bins}")
    copied = set(re.findall(r"target/release/([\w-]+)", build))
    check("docker: copies every workspace binary out of the build", copied == set(bins), f"{copied} vs {set(bins)}")
    check("docker: builds with --locked (the committed Cargo.lock)", "--locked" in build)
    check("docker: default features (publisher's `firestore`, the jobs' `otlp`)", "--no-default-features" not in build and "--features" not in build)
    for pkg, feature in (("publisher", "firestore"), ("sql-writer", "otlp")):
        default = re.search(r"^default\s*=\s*\[([^\]]*)\]", (ROOT / f"crates/{pkg}/Cargo.toml").read_text(), re.M)
        check(f"docker: {pkg} has `{feature}` by default", bool(default) and f'"{feature}"' in default.group(1))
    for stage in ("sql-writer", "publisher", "mirrorctl"):
        body = stage_body(text, stage)
        entry = re.search(r"^ENTRYPOINT\s+(\[.*\])", body, re.M)
        entry_bin = json.loads(entry.group(1))[0] if entry else ""
        copy = re.search(rf"^COPY --from=build /out/{re.escape(stage)} (\S+)", body, re.M)
        check(f"docker: stage {stage} runs the {stage} binary it copies", bool(copy) and copy.group(1) == entry_bin, f"{entry_bin} vs {copy and copy.group(1)}")
    for src in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
        check(f"docker: COPY source {src} exists", (ROOT / src).exists())
    ignore = [l.strip().strip("/") for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    check("docker: .dockerignore keeps target/ out of the build context", "target" in ignore, str(ignore))
    check("docker: .dockerignore keeps .git out of the build context", ".git" in ignore, str(ignore))
    for b, pkg in bins.items():
        main = (ROOT / f"crates/{pkg}/src/main.rs").read_text()
        check(f"docker: {b} installs the rustls crypto provider", "default_provider().install_default()" in main)
    version = re.search(r'^rust-version\s*=\s*"([\d.]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    image = re.search(r"^FROM rust:(\S+) AS build", text, re.M)
    check(
        "docker: the build image is not older than rust-version",
        bool(image) and (image.group(1).split("-")[0] in ("1", "latest") or tuple(map(int, image.group(1).split("-")[0].split("."))) >= tuple(map(int, version.group(1).split(".")))),
        image and image.group(1),
    )


def stage_body(text: str, stage: str) -> str:
    return text.split(f"AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]


def workspace_bins() -> dict[str, str]:
    """Binary name -> package directory name, for every workspace member."""
    import tomllib

    root = tomllib.loads((ROOT / "Cargo.toml").read_text())
    out: dict[str, str] = {}
    for member in root["workspace"]["members"]:
        d = ROOT / member
        manifest = tomllib.loads((d / "Cargo.toml").read_text())
        name = manifest["package"]["name"]
        for b in manifest.get("bin", []):
            out[b["name"]] = d.name
        if (d / "src/main.rs").exists() and not manifest.get("bin"):
            out[name] = d.name
        for extra in sorted((d / "src/bin").glob("*.rs")) if (d / "src/bin").is_dir() else []:
            out[extra.stem] = d.name
    return out


# --- The manifests against the binaries' real command lines -----------------

# Read by libraries or the platform, not by the binaries' own flags.
EXTERNAL_ENV = {
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "FIRESTORE_EMULATOR_HOST",
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_METRIC_EXPORT_INTERVAL",
}


class Help:
    """One `--help` page of a clap command."""

    def __init__(self, text: str):
        self.text = text
        self.options: dict[str, dict] = {}
        self.subcommands: set[str] = set()
        self.positionals: list[str] = []
        section = None
        current = None
        for line in text.splitlines():
            if re.match(r"^[A-Z][A-Za-z ]*:$", line):
                section = line[:-1]
                current = None
                continue
            if section == "Commands":
                m = re.match(r"^  (\S+)", line)
                if m:
                    self.subcommands.add(m.group(1))
            elif section == "Arguments":
                m = re.match(r"^  ([<\[]\S+)", line)
                if m:
                    self.positionals.append(m.group(1))
            elif section == "Options":
                m = re.match(r"^\s{2,6}(?:-\w, )?--([\w-]+)(?:[ =](\[?)<([^>]+)>)?", line)
                if m:
                    current = {"value": bool(m.group(3)), "optional_value": m.group(2) == "[", "env": None}
                    self.options["--" + m.group(1)] = current
                    continue
                env = re.search(r"\[env: ([A-Z0-9_]+)", line)
                if env and current is not None:
                    current["env"] = env.group(1)
        usage = re.search(r"^Usage: (.*)$", text, re.M)
        self.usage = usage.group(1) if usage else ""

    def required(self) -> list[str]:
        """Flags the usage line lists outside brackets."""
        flat = re.sub(r"\[[^\]]*\]", "", self.usage)
        return re.findall(r"(--[\w-]+) <", flat)

    def envs(self) -> set[str]:
        return {o["env"] for o in self.options.values() if o["env"]}


def bin_dir() -> Path:
    import os

    return Path(os.environ.get("MIRROR_BIN_DIR", ROOT / "target/debug"))


_helps: dict[tuple, Help] = {}


def help_of(binary: str, path: tuple[str, ...]) -> Help:
    import subprocess

    key = (binary, path)
    if key not in _helps:
        out = subprocess.run([str(bin_dir() / binary), *path, "--help"], capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
        _helps[key] = Help(out.stdout)
    return _helps[key]


def cli_errors(binary: str, args: list[str], env: set[str]) -> list[str]:
    """What is wrong with running `binary args` with these env vars set."""
    errors: list[str] = []
    path: tuple[str, ...] = ()
    helps = [help_of(binary, path)]
    given: set[str] = set()
    positionals = 0
    i = 0
    while i < len(args):
        a = args[i]
        h = helps[-1]
        if a == "--":
            break
        if a.startswith("--"):
            name, eq, _ = a.partition("=")
            opt = h.options.get(name)
            if opt is None:
                errors.append(f"`{' '.join((binary, *path))}` has no flag {name}")
            else:
                given.add(name)
                if opt["value"] and not opt["optional_value"] and not eq:
                    i += 1
                    if i >= len(args):
                        errors.append(f"{name} needs a value")
        elif a in h.subcommands and positionals == 0:
            path = (*path, a)
            helps.append(help_of(binary, path))
            if not helps[-1].text:
                errors.append(f"`{binary} {' '.join(path)} --help` printed nothing")
        else:
            if positionals >= len(h.positionals) and not any(p.endswith("...") for p in h.positionals):
                errors.append(f"`{' '.join((binary, *path))}` takes no argument `{a}` (a flag without a value followed by one?)")
            positionals += 1
        i += 1
    readable = set().union(*(h.envs() for h in helps))
    for flag in dict.fromkeys(f for h in helps for f in h.required()):
        if True:
            # A subcommand's usage repeats its parents' required flags.
            opt = next((x.options[flag] for x in helps if flag in x.options), {})
            if flag not in given and opt.get("env") not in env:
                errors.append(f"required {flag} (or its env var {opt.get('env')}) is not given")
    for name in sorted(env - readable - EXTERNAL_ENV):
        errors.append(f"env {name} is read by neither `{' '.join((binary, *path))}` nor a known library")
    return errors


def container_command(c: dict, stages: dict[str, dict]) -> tuple[str, list[str]] | None:
    """(binary, args) a container runs, from its image's stage and its command/args."""
    import shlex

    image = c["image"].rsplit("/", 1)[-1].split(":", 1)[0]
    stage = stages.get(image)
    check(f"cli: image {c['image']} is a Dockerfile stage", stage is not None, str(sorted(stages)))
    if stage is None:
        return None
    command, args = c.get("command"), list(c.get("args", []))
    if command in (["/bin/sh", "-c"], ["sh", "-c"]):
        tokens = shlex.split(" ".join(args))
        if stage["path"] not in tokens:
            check(f"cli: the shell wrapper of {image} runs {stage['path']}", False, str(tokens))
            return None
        rest = tokens[tokens.index(stage["path"]) + 1 :]
        # `$(...)` command substitutions are values.
        return stage["binary"], [t if not t.startswith("$(") else "VALUE" for t in rest]
    if command:
        check(f"cli: {image}'s command runs its binary", command[0] == stage["path"], str(command))
        args = command[1:] + args
    return stage["binary"], args


def check_cli(k8s: dict[str, dict]) -> None:
    text = (HERE / "docker/Dockerfile").read_text()
    stages = {}
    for stage in ("sql-writer", "publisher", "mirrorctl"):
        entry = re.search(r"^ENTRYPOINT\s+(\[.*\])", stage_body(text, stage), re.M)
        path = json.loads(entry.group(1))[0]
        stages[stage] = {"path": path, "binary": path.rsplit("/", 1)[-1]}
    missing = [b for b in {s["binary"] for s in stages.values()} if not (bin_dir() / b).exists()]
    if missing:
        print(f"skipped: the manifests' command lines against --help: {', '.join(missing)} not built in {bin_dir()} (cargo build --bins)")
        return
    newest_src = max(p.stat().st_mtime for p in (ROOT / "crates").rglob("*.rs"))
    for b in {s["binary"] for s in stages.values()}:
        if (bin_dir() / b).stat().st_mtime < newest_src:
            print(f"warning: {bin_dir() / b} is older than the sources; its --help may be stale")

    containers: list[tuple[str, dict, set[str]]] = []
    for key, doc in k8s.items():
        spec = doc.get("spec", {})
        pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
        for c in pod.get("containers", []):
            containers.append((f"k8s {key}", c, {e["name"] for e in c.get("env", [])}))
    for f in sorted((HERE / "azure/containerapps").glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        for c in doc["properties"]["template"]["containers"]:
            containers.append((f"aca {f.name}", c, {e["name"] for e in c.get("env", [])}))
    check("cli: containers found in the manifests", len(containers) >= 10, str(len(containers)))
    for where, c, env in containers:
        cmd = container_command(c, stages)
        if cmd is None:
            continue
        binary, args = cmd
        errors = cli_errors(binary, args, env)
        check(f"cli: {where} runs `{binary} {' '.join(args)}`", not errors, "; ".join(errors))
        if binary == "mirrorctl" and args[:1] == ["consistency"]:
            # The image carries the fixtures, the default source: the job must name Firestore.
            check(f"cli: {where} compares against Firestore", "firestore" in args[args.index("--source") + 1 :][:1] if "--source" in args else False, str(args))
            routes = {"CONSISTENCY_PUSHGATEWAY", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"} & env
            check(f"cli: {where} pushes its drift metric somewhere", bool(routes) or "--pushgateway" in args, str(sorted(env)))

    # The parser rejects what it should (so a pass means something).
    check("cli: a misspelt flag is rejected", bool(cli_errors("mirrorctl", ["consistency", "--treshold", "0.5"], set())))
    check("cli: a value after a flag that takes none is rejected", bool(cli_errors("mirrorctl", ["consistency", "--json", "/reports/c.json"], set())))
    check("cli: a missing required flag is rejected", bool(cli_errors("mirrorctl", ["prune-ledger"], set())))
    check("cli: an env var no one reads is rejected", bool(cli_errors("sql-writer", [], {"WRITER_CONCURENCY"})))
    check("cli: the consistency job's flags are accepted", not cli_errors("mirrorctl", ["consistency", "--source", "firestore", "--json-file", "x", "--metrics-file", "y", "--pushgateway", "http://p:9091"], {"LOG_FORMAT", "CONSISTENCY_PUSHGATEWAY"}))


def main() -> int:
    k8s = check_k8s()
    check_container_apps()
    exprs = check_rules()
    check_alerts_bicep(exprs)
    check_dockerfile()
    check_cli(k8s)
    failed = [r for r in results if not r[1]]
    for name, ok, detail in results:
        if not ok:
            print(f"FAIL {name}: {detail}")
    print(f"deploy: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
