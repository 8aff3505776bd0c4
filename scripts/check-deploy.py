#!/usr/bin/env python3
"""Static checks of Surge's deployment files (no Docker engine, no cluster needed).

* compose/docker-compose.yml: `docker-compose config` accepts it (with and without the
  autoscale, observe and cluster profiles); workers have replicas and a stop grace
  period; the observe profile's Prometheus config passes `promtool check config` (rules
  included); the cluster profile's three nodes share a cookie and the classic-config
  peer discovery file, and its workers list every node.
* compose/Dockerfile: multi-stage; the runtime stage runs as a non-root user.
* deploy/kubernetes/*.yaml: core kinds against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict); KEDA kinds against the schema below (the fields of
  KEDA 2.x's CRDs that these files use); the RabbitmqCluster against the fields of the
  RabbitMQ Cluster Operator's CRD it uses (odd replicas >= 3, quorum queues spanning
  the nodes); and the cross-references between them.

Exits non-zero with one line per problem.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.30.0"
problems = []


def fail(msg):
    problems.append(msg)


def mounts(svc):
    """A compose service's volumes, each as `source:target`."""
    return [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}"
            for v in svc.get("volumes", [])]


def check_prometheus(svc):
    """The observe profile's Prometheus: it mounts deploy/prometheus, its config is
    valid (`promtool check config`, which also checks rules.yml) and it scrapes the
    worker service by its compose DNS name."""
    if not any(m.split(":")[0].rstrip("/").endswith("deploy/prometheus") for m in mounts(svc)):
        fail("compose: prometheus must mount deploy/prometheus (its config and rules.yml)")
    cfg_arg = [a for a in svc.get("command", []) if str(a).startswith("--config.file=")]
    cfg_name = cfg_arg[0].rsplit("/", 1)[-1] if cfg_arg else None
    cfg_path = ROOT / "deploy" / "prometheus" / (cfg_name or "")
    if not cfg_name or not cfg_path.is_file():
        fail(f"compose: prometheus --config.file {cfg_name!r} is not a file in deploy/prometheus")
        return
    if shutil.which("promtool") is None:
        fail("promtool is not installed: run `make prometheus-tools` (Debian's prometheus)")
        return
    r = subprocess.run(["promtool", "check", "config", str(cfg_path)], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"promtool check config {cfg_path.name}: {(r.stdout + r.stderr).strip()}")
    scrape = yaml.safe_load(cfg_path.read_text())
    jobs = {j["job_name"]: j for j in scrape.get("scrape_configs", [])}
    names = [n for d in jobs.get("surge", {}).get("dns_sd_configs", []) for n in d.get("names", [])]
    if "worker" not in names:
        fail(f"{cfg_path.name}: job surge must discover the compose service 'worker' by DNS")


def check_cluster(services):
    """The cluster profile: three nodes with one Erlang cookie and the classic-config
    peer discovery file listing all three, and workers whose AMQP_URL names every node."""
    nodes = ["rabbit-1", "rabbit-2", "rabbit-3"]
    conf = (ROOT / "compose" / "rabbitmq" / "cluster.conf").read_text()
    cookies = set()
    for n in nodes:
        svc = services.get(n, {})
        if svc.get("hostname") != n:
            fail(f"compose: {n} must have hostname {n} (its node name is rabbit@{n})")
        if f"rabbit@{n}" not in conf:
            fail(f"cluster.conf: classic_config does not list rabbit@{n}")
        cookies.add(svc.get("environment", {}).get("RABBITMQ_ERLANG_COOKIE"))
        if not any("cluster.conf" in m and "/etc/rabbitmq/conf.d/" in m for m in mounts(svc)):
            fail(f"compose: {n} does not mount rabbitmq/cluster.conf into conf.d")
    if len(cookies) != 1 or None in cookies:
        fail("compose: the cluster nodes must share one RABBITMQ_ERLANG_COOKIE")
    if "peer_discovery_backend = classic_config" not in conf:
        fail("cluster.conf: peer discovery must be classic_config")
    url = services.get("worker-cluster", {}).get("environment", {}).get("AMQP_URL", "")
    for n in nodes:
        if n not in url:
            fail(f"compose: worker-cluster's AMQP_URL does not name {n}")


# --- Compose ---------------------------------------------------------------------------
compose = ROOT / "compose" / "docker-compose.yml"
PROFILE_SERVICES = {
    "autoscale": ["autoscaler"],
    "observe": ["prometheus"],
    "cluster": ["rabbit-1", "rabbit-2", "rabbit-3", "worker-cluster"],
}
for extra in ([], ["--profile", "autoscale"], ["--profile", "observe"], ["--profile", "cluster"]):
    r = subprocess.run(
        ["docker-compose", "-f", str(compose), *extra, "config"],
        capture_output=True, text=True, cwd=ROOT,
    )
    if r.returncode != 0:
        fail(f"docker-compose config {' '.join(extra)}: {r.stderr.strip()}")
        continue
    cfg = yaml.safe_load(r.stdout)
    services = cfg.get("services", {})
    for needed in ["rabbitmq", "worker"] + (PROFILE_SERVICES[extra[1]] if extra else []):
        if needed not in services:
            fail(f"compose: service {needed!r} missing")
    worker = services.get("worker", {})
    if not worker.get("deploy", {}).get("replicas"):
        fail("compose: worker has no deploy.replicas")
    if "stop_grace_period" not in worker:
        fail("compose: worker has no stop_grace_period (it must outlast a batch)")
    if "AMQP_URL" not in worker.get("environment", {}):
        fail("compose: worker has no AMQP_URL")

    if extra == ["--profile", "observe"]:
        check_prometheus(services.get("prometheus", {}))
    if extra == ["--profile", "cluster"]:
        check_cluster(services)

# --- Dockerfile ------------------------------------------------------------------------
dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", dockerfile, re.M | re.I)
if len(stages) < 2:
    fail("Dockerfile: not multi-stage")
runtime = re.split(r"^FROM\s", dockerfile, flags=re.M)[-1]
users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
if not users or users[-1].split(":")[0] in ("root", "0"):
    fail("Dockerfile: the runtime stage must end as a non-root USER")
if "COPY --from=" not in runtime:
    fail("Dockerfile: the runtime stage should copy the binaries from the build stage")
if "cargo build --release --locked" not in dockerfile:
    fail("Dockerfile: build with --release --locked")

# --- Kubernetes ------------------------------------------------------------------------
def custom_resource(api_version, spec):
    """The schema of a custom resource of `api_version` whose spec follows `spec`."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": spec,
        },
    }


KEDA_SCHEMAS = {
    "TriggerAuthentication": custom_resource("keda.sh/v1alpha1", {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "secretTargetRef": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["parameter", "name", "key"],
                    "properties": {
                        "parameter": {"type": "string"},
                        "name": {"type": "string"},
                        "key": {"type": "string"},
                    },
                },
            },
            "env": {"type": "array"},
            "podIdentity": {"type": "object"},
        },
    }),
    "ScaledObject": custom_resource("keda.sh/v1alpha1", {
        "type": "object",
        "additionalProperties": False,
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "apiVersion": {"type": "string"},
                    "envSourceContainerName": {"type": "string"},
                },
            },
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "advanced": {"type": "object"},
            "fallback": {"type": "object"},
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "metadata"],
                    "properties": {
                        "type": {"enum": ["rabbitmq", "prometheus", "cpu", "memory", "cron"]},
                        "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                        "metadata": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "authenticationRef": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                        },
                    },
                },
            },
        },
    }),
}

# The fields of the RabbitMQ Cluster Operator's RabbitmqCluster CRD (rabbitmq.com/v1beta1)
# that Surge's manifest uses, with the types the CRD gives them.
KEDA_SCHEMAS["RabbitmqCluster"] = custom_resource("rabbitmq.com/v1beta1", {
    "type": "object",
    "additionalProperties": False,
    "required": ["replicas"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 1},
        "image": {"type": "string"},
        "imagePullSecrets": {"type": "array"},
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"requests": {"type": "object"}, "limits": {"type": "object"}},
        },
        "persistence": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "storageClassName": {"type": "string"},
                "storage": {"type": "string", "pattern": "^[0-9]+(Ki|Mi|Gi|Ti)?$"},
            },
        },
        "rabbitmq": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "additionalPlugins": {"type": "array", "items": {"type": "string"}},
                "additionalConfig": {"type": "string"},
                "advancedConfig": {"type": "string"},
                "envConfig": {"type": "string"},
            },
        },
        "service": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]},
                "annotations": {"type": "object"},
            },
        },
        "affinity": {"type": "object"},
        "tolerations": {"type": "array"},
        "tls": {"type": "object"},
        "override": {"type": "object"},
        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
    },
})

docs = []
for f in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
    for d in yaml.safe_load_all(f.read_text()):
        if d:
            docs.append((f.name, d))
by_kind = {}
for name, d in docs:
    kind = d.get("kind")
    by_kind.setdefault(kind, []).append(d)
    if kind in KEDA_SCHEMAS:
        try:
            jsonschema.validate(d, KEDA_SCHEMAS[kind])
        except jsonschema.ValidationError as e:
            fail(f"{name}: {kind}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
    else:
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {kind}: {e.message} at {'/'.join(map(str, e.path))}")
        except Exception as e:  # an unknown kind, say
            fail(f"{name}: {kind}: {e}")

deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}
auths = {d["metadata"]["name"]: d for d in by_kind.get("TriggerAuthentication", [])}
if not deployments:
    fail("kubernetes: no worker Deployment")
for name, dep in deployments.items():
    pod = dep["spec"]["template"]["spec"]
    if pod.get("terminationGracePeriodSeconds", 30) < 30:
        fail(f"{name}: terminationGracePeriodSeconds must outlast the longest batch (>= 30 s)")
    for c in pod["containers"]:
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            fail(f"{name}: container {c['name']} must be ready on /readyz")
        if not c.get("resources", {}).get("requests"):
            fail(f"{name}: container {c['name']} has no resource requests")
    for v in pod.get("volumes", []):
        s = v.get("secret", {}).get("secretName")
        if s and s not in secrets:
            fail(f"{name}: volume {v['name']} names Secret {s!r}, which no file defines")
for rc in by_kind.get("RabbitmqCluster", []):
    n = rc["metadata"]["name"]
    replicas = rc["spec"]["replicas"]
    if replicas < 3 or replicas % 2 == 0:
        fail(f"{n}: RabbitmqCluster replicas {replicas}: use an odd number >= 3, so a majority survives a node's loss")
    extra_cfg = rc["spec"].get("rabbitmq", {}).get("additionalConfig", "")
    if "quorum_queue.initial_cluster_size" not in extra_cfg:
        fail(f"{n}: set quorum_queue.initial_cluster_size so job queues span the nodes")
    host = f"{n}.{rc['metadata'].get('namespace', 'default')}.svc"
    for sec in secrets.values():
        if host not in sec.get("stringData", {}).get("amqp-url", ""):
            fail(f"Secret {sec['metadata']['name']}: amqp-url does not point at the cluster's service {host}")
if not by_kind.get("ScaledObject"):
    fail("kubernetes: no KEDA ScaledObject")
for so in by_kind.get("ScaledObject", []):
    n = so["metadata"]["name"]
    target = so["spec"]["scaleTargetRef"]["name"]
    if target not in deployments:
        fail(f"{n}: scaleTargetRef {target!r} is not a Deployment here")
    if so["spec"].get("minReplicaCount") != 0:
        fail(f"{n}: minReplicaCount must be 0 (scale to zero)")
    for t in so["spec"]["triggers"]:
        ref = t.get("authenticationRef", {}).get("name")
        if ref and ref not in auths:
            fail(f"{n}: authenticationRef {ref!r} is not a TriggerAuthentication here")
        if t["type"] == "rabbitmq" and not t["metadata"].get("queueName", "").startswith("surge.jobs."):
            fail(f"{n}: the rabbitmq trigger must name a surge.jobs.<model> queue")
for an, a in auths.items():
    for ref in a["spec"].get("secretTargetRef", []):
        s = secrets.get(ref["name"])
        if s is None or ref["key"] not in s.get("stringData", s.get("data", {})):
            fail(f"{an}: secretTargetRef {ref['name']}/{ref['key']} is defined by no Secret here")

if problems:
    print("check-deploy: FAILED", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)
print(f"check-deploy: ok (compose with and without the autoscale, observe and cluster profiles, "
      f"Prometheus config, Dockerfile, "
      f"{len(docs)} Kubernetes objects against v{K8S_VERSION} schemas and KEDA's)")
