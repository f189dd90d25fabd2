"""The Helm chart, rendered: lint, Kubernetes schemas, and what it promises.

Renders ``helm/phobos`` with its default values and with the realistic
``ci/production-values.yaml`` (plus a few variants), validates every manifest
against the Kubernetes API's JSON schemas with ``kubernetes-validate`` (which
carries the schemas inside its wheel: nothing is downloaded, and as root the
validation runs in a network namespace of its own to prove it), and asserts
the chart's security and operations contract: the tracer is not privileged
and holds only the listed capabilities, every container has probes where it
serves and resources everywhere, the API runs as non-root, secrets travel
through Secrets, and bad values are refused by values.schema.json.

Also checked statically, as no container engine runs here: the Dockerfiles
(base images, non-root API user, files they copy exist, pins equal to
setup.cfg) and the systemd units.

Tools: ``bash helm/tools/install.sh`` puts helm and kubernetes-validate in
``${PHOBOS_TOOLS:-~/.cache/phobos/tools}/bin``; tests skip without them
locally and fail in CI.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import require

# helm renders the chart in a process per variant; the validator is another.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "phobos"
PRODUCTION = CHART / "ci" / "production-values.yaml"
DOCKER = ROOT / "helm" / "docker"
SYSTEMD = ROOT / "helm" / "systemd"
TOOLS_BIN = Path(os.environ.get("PHOBOS_TOOLS") or Path.home() / ".cache" / "phobos" / "tools") / "bin"

TRACER_CAPS = {"BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE"}


def _tool(name: str) -> str | None:
    candidate = TOOLS_BIN / name
    if candidate.exists() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


@pytest.fixture(scope="module")
def helm() -> str:
    path = _tool("helm")
    require(path is not None, "helm not installed: run helm/tools/install.sh")
    return path


@pytest.fixture(scope="module")
def validator() -> str:
    path = _tool("kubernetes-validate")
    require(path is not None, "kubernetes-validate not installed: run helm/tools/install.sh")
    return path


def _template(helm: str, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess:
    return subprocess.run([helm, "template", "phobos", str(chart), "--namespace", "phobos", *args],
                          capture_output=True, text=True, timeout=60)


def render(helm: str, *args: str, chart: Path = CHART) -> list[dict]:
    result = _template(helm, *args, chart=chart)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


VARIANTS = {
    "default": (),
    "production": ("-f", str(PRODUCTION)),
    # Chart-managed secrets, the ingest consumer, HTTP tracers behind a policy.
    "ingest": (
        "--set", "store.type=clickhouse,clickhouse.host=ch.example,clickhouse.password=p@ss/word",
        "--set", "kafka.brokers={k1:9092,k2:9092},ingest.enabled=true,ingest.replicas=2",
        "--set", "kafka.sasl.enabled=true,kafka.sasl.username=u,kafka.sasl.password=s",
        "--set", "kafka.tls.enabled=true,kafka.tls.secretName=ca,kafka.tls.certKey=tls.crt,kafka.tls.keyKey=tls.key",
        "--set", "tracer.sink=http://phobos-api.phobos.svc:8080,networkPolicy.enabled=true",
        "--set", "networkPolicy.nodeCIDRs={10.0.0.0/16}",
    ),
    "legacy-kernel": ("--set", "tracer.legacyKernel=true,api.service.type=NodePort"),
    # The API alone, e.g. in front of tracers managed elsewhere.
    "api-only": ("--set", "tracer.enabled=false,store.chdb.persistence.enabled=false,api.service.type=LoadBalancer"),
}


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {name: render(helm, *args) for name, args in VARIANTS.items()}


def find(docs: list[dict], kind: str, component: str | None = None) -> list[dict]:
    return [
        d for d in docs
        if d["kind"] == kind
        and (component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]


def one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    (doc,) = find(docs, kind, component)
    return doc


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "Job", "StatefulSet")]


# --- helm lint and the Kubernetes schemas -----------------------------------------------


@pytest.mark.parametrize("variant", ["default", "production"])
def test_helm_lint_passes(helm, variant):
    result = subprocess.run([helm, "lint", "--strict", str(CHART), *VARIANTS[variant]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def _validate(validator: str, path: Path, kube_version: str | None = None) -> subprocess.CompletedProcess:
    cmd = [validator, "--strict", "--quiet", str(path)]
    if kube_version:
        cmd[1:1] = ["--kubernetes-version", kube_version]
    # As root, prove the schemas are local: no network at all in the validator's namespace.
    if os.geteuid() == 0 and shutil.which("unshare") and subprocess.run(
            ["unshare", "--net", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "--net", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_manifests_validate_against_kubernetes_schemas(helm, validator, rendered, variant, tmp_path):
    path = tmp_path / f"{variant}.yaml"
    path.write_text(yaml.safe_dump_all(rendered[variant]))
    result = _validate(validator, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def _chart_min_kube() -> str:
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    return re.match(r">=\s*(\d+\.\d+\.\d+)", constraint).group(1)


@pytest.mark.parametrize("variant", ["default", "production"])
def test_manifests_for_the_oldest_supported_kubernetes_validate_there(helm, validator, variant, tmp_path):
    """Fields newer than Chart.yaml's kubeVersion floor (securityContext.appArmorProfile, 1.30)
    are rendered only where the cluster knows them."""
    oldest = _chart_min_kube()
    docs = render(helm, "--kube-version", oldest, *VARIANTS[variant])
    path = tmp_path / f"{variant}-{oldest}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = _validate(validator, path, oldest)
    assert result.returncode == 0, result.stdout + result.stderr
    ds = one(docs, "DaemonSet", "tracer")
    assert ds["spec"]["template"]["metadata"]["annotations"][
        "container.apparmor.security.beta.kubernetes.io/tracer"] == "runtime/default"


def test_validator_refuses_a_broken_manifest(validator, rendered, tmp_path):
    """The validation above has teeth: a typo'd field and a wrong type are errors."""
    docs = [dict(d) for d in rendered["default"]]
    ds = yaml.safe_load(yaml.safe_dump(one(docs, "DaemonSet", "tracer")))
    container = pod_spec(ds)["containers"][0]
    container["securityContext"]["capabilites"] = {"add": ["BPF"]}  # misspelt
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(ds))
    result = _validate(validator, path)
    assert result.returncode != 0
    assert "capabilites" in result.stdout + result.stderr

    ds = yaml.safe_load(yaml.safe_dump(one(docs, "DaemonSet", "tracer")))
    pod_spec(ds)["containers"][0]["ports"][0]["containerPort"] = "metrics"
    path.write_text(yaml.safe_dump(ds))
    result = _validate(validator, path)
    assert result.returncode != 0
    assert "containerPort" in result.stdout + result.stderr


# --- the tracer: least privilege, host access, probes --------------------------------------


@pytest.mark.parametrize("variant", ["default", "production"])
def test_tracer_is_not_privileged_and_holds_only_the_listed_capabilities(rendered, variant):
    ds = one(rendered[variant], "DaemonSet", "tracer")
    spec = pod_spec(ds)
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == TRACER_CAPS
    assert "SYS_ADMIN" not in sc["capabilities"]["add"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["appArmorProfile"] == {"type": "RuntimeDefault"}
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["automountServiceAccountToken"] is False
    assert {"operator": "Exists"} in spec["tolerations"], "must run on tainted nodes too"


def test_tracer_mounts_host_paths_read_only_except_its_spool(rendered):
    spec = pod_spec(one(rendered["default"], "DaemonSet", "tracer"))
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    for path in ("/lib/modules", "/usr/src", "/sys/kernel/tracing", "/sys/kernel/debug"):
        assert mounts[path]["readOnly"] is True, path
        assert host[mounts[path]["name"]] == path
    assert not mounts["/var/lib/phobos/spool"].get("readOnly")
    assert host[mounts["/var/lib/phobos/spool"]["name"]] == "/var/lib/phobos/spool"


def test_sys_admin_only_as_the_legacy_kernel_opt_in(rendered):
    container = pod_spec(one(rendered["legacy-kernel"], "DaemonSet", "tracer"))["containers"][0]
    sc = container["securityContext"]
    assert set(sc["capabilities"]["add"]) == TRACER_CAPS | {"SYS_ADMIN"}
    assert sc["privileged"] is False
    # Kubernetes refuses allowPrivilegeEscalation=false next to CAP_SYS_ADMIN.
    assert sc["allowPrivilegeEscalation"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/sys/kernel/tracing"]["readOnly"] is False  # kprobe_events before 4.17


def test_tracer_probes_its_metrics_port_on_the_node_address(rendered):
    container = pod_spec(one(rendered["default"], "DaemonSet", "tracer"))["containers"][0]
    env = env_of(container)
    (port,) = container["ports"]
    assert port["name"] == "metrics" and str(port["containerPort"]) == env["PHOBOS_METRICS_PORT"]["value"] == "9435"
    assert env["PHOBOS_METRICS_ADDR"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["PHOBOS_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe


def test_tracer_sink_follows_kafka_or_api(rendered):
    default = env_of(pod_spec(one(rendered["default"], "DaemonSet", "tracer"))["containers"][0])
    assert default["PHOBOS_SINK"]["value"] == "http://phobos-api.phobos.svc:8080"
    assert default["PHOBOS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "phobos", "key": "token"}
    prod = env_of(pod_spec(one(rendered["production"], "DaemonSet", "tracer"))["containers"][0])
    assert prod["PHOBOS_SINK"]["value"].startswith("kafka://kafka-0.kafka.kafka.svc.cluster.local:9093,")
    assert prod["PHOBOS_SINK"]["value"].endswith("/phobos")
    assert prod["PHOBOS_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert prod["PHOBOS_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "phobos-kafka-sasl",
                                                                               "key": "password"}
    assert prod["PHOBOS_CATALOG"]["value"] == "/etc/phobos/catalog/catalog.yaml"
    assert "PHOBOS_TOKEN" not in prod


# --- every workload: resources, probes, non-root ------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_container_has_requests_and_limits(rendered, variant):
    for doc in workloads(rendered[variant]):
        spec = pod_spec(doc)
        for container in spec.get("initContainers", []) + spec["containers"]:
            res = container.get("resources") or {}
            where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= set(res.get("requests", {})), where
            assert "memory" in res.get("limits", {}), where


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_everything_but_the_tracer_runs_as_non_root(rendered, variant):
    others = [d for d in workloads(rendered[variant]) if d["metadata"]["labels"]["app.kubernetes.io/component"] != "tracer"]
    assert others
    for doc in others:
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        assert spec["automountServiceAccountToken"] is False
        assert not spec.get("hostNetwork") and not spec.get("hostPID")
        for container in spec.get("initContainers", []) + spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "add" not in sc["capabilities"]


@pytest.mark.parametrize("variant", ["default", "production"])
def test_api_runs_gunicorn_with_health_probes(rendered, variant):
    docs = rendered[variant]
    dep = one(docs, "Deployment", "api")
    (container,) = pod_spec(dep)["containers"]
    cmd = container["command"]
    assert cmd[0] == "gunicorn" and cmd[-1] == "api.app:create_app()"
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Ready only when the store answers and has the schema.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    svc = one(docs, "Service", "api")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    env = env_of(container)
    assert env["PHOBOS_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert int(env["PHOBOS_SQL_MAX_ROWS"]["value"]) > 0
    if variant == "default":  # chDB: one process owns the data directory
        assert dep["spec"]["replicas"] == 1 and "--workers=1" in cmd
        assert dep["spec"]["strategy"]["type"] == "Recreate"
        assert env["PHOBOS_STORE"]["value"] == "chdb:///var/lib/phobos/data"
        (init,) = pod_spec(dep)["initContainers"]
        assert "phobos migrate" in init["args"][0]
        assert one(docs, "PersistentVolumeClaim")["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    else:
        assert dep["spec"]["replicas"] == 3 and "--workers=4" in cmd
        pdb = one(docs, "PodDisruptionBudget")
        assert pdb["spec"]["minAvailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        assert one(docs, "Ingress")["spec"]["rules"][0]["host"] == "phobos.example.com"


# --- secrets, migration, catalog ----------------------------------------------------------------


def test_store_password_reaches_pods_only_through_secrets(rendered):
    for variant in ("production", "ingest"):
        for doc in workloads(rendered[variant]):
            if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "tracer":
                continue
            env = env_of(pod_spec(doc)["containers"][0])
            store = env["PHOBOS_STORE"]["value"]
            assert store.startswith("clickhouse://phobos:$(PHOBOS_CLICKHOUSE_PASSWORD)@"), store
            assert list(env).index("PHOBOS_CLICKHOUSE_PASSWORD") < list(env).index("PHOBOS_STORE")
            assert "secretKeyRef" in env["PHOBOS_CLICKHOUSE_PASSWORD"]["valueFrom"]
    # What the pod sees once Kubernetes substitutes the (percent-encoded) password.
    from api.storage import parse_store_url

    import base64

    secret = one(rendered["ingest"], "Secret", "config")
    encoded = base64.b64decode(secret["data"]["clickhouse-password"]).decode()
    env = env_of(pod_spec(one(rendered["ingest"], "Deployment", "api"))["containers"][0])
    url = parse_store_url(env["PHOBOS_STORE"]["value"].replace("$(PHOBOS_CLICKHOUSE_PASSWORD)", encoded))
    assert (url.host, url.port, url.user, url.password, url.database) == ("ch.example", 9000, "phobos", "p@ss/word",
                                                                        "phobos")
    env = env_of(pod_spec(one(rendered["production"], "Deployment", "api"))["containers"][0])
    url = parse_store_url(env["PHOBOS_STORE"]["value"].replace("$(PHOBOS_CLICKHOUSE_PASSWORD)", "x"))
    assert (url.port, url.secure) == (9440, True)
    text = yaml.safe_dump_all(rendered["ingest"])
    assert "p@ss/word" not in text and "p%40ss%2Fword" not in text  # only base64 in Secrets


def test_migration_job_is_a_pre_install_hook_with_cluster_and_kafka(rendered):
    job = one(rendered["production"], "Job", "migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    cmd = pod_spec(job)["containers"][0]["command"]
    assert cmd[:2] == ["phobos", "migrate"]
    assert "--cluster=phobos_cluster" in cmd
    assert "--kafka=kafka-0.kafka.kafka.svc.cluster.local:9093,kafka-1.kafka.kafka.svc.cluster.local:9093," \
           "kafka-2.kafka.kafka.svc.cluster.local:9093" in cmd
    assert "--topic-prefix=phobos" in cmd
    assert pod_spec(job)["restartPolicy"] == "Never"
    # The catalog is loaded after the release's ConfigMap exists.
    catalog = one(rendered["production"], "Job", "catalog")
    assert catalog["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert pod_spec(catalog)["containers"][0]["command"][:3] == ["phobos", "catalog", "load"]


def test_chart_managed_password_has_a_hook_secret_created_before_the_job(rendered):
    docs = rendered["ingest"]
    job = one(docs, "Job", "migrate")
    (hook_secret,) = [d for d in find(docs, "Secret", "migrate")]
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == job["metadata"]["annotations"]["helm.sh/hook"]
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < \
        int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    env = env_of(pod_spec(job)["containers"][0])
    assert env["PHOBOS_CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == hook_secret["metadata"]["name"]
    # No migration Job for chDB: the API pod migrates its own store.
    assert not find(rendered["default"], "Job")
    assert "--cluster" not in " ".join(pod_spec(job)["containers"][0]["command"])


def test_ingest_consumer_and_its_kafka_settings(rendered):
    dep = one(rendered["ingest"], "Deployment", "ingest")
    (container,) = pod_spec(dep)["containers"]
    assert container["command"] == ["phobos", "ingest", "--kafka=k1:9092,k2:9092", "--topic-prefix=phobos"]
    env = env_of(container)
    assert env["PHOBOS_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["PHOBOS_KAFKA_SSL_KEY_LOCATION"]["value"] == "/etc/phobos/kafka-tls/tls.key"
    assert env["PHOBOS_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "phobos",
                                                                              "key": "kafka-sasl-password"}
    assert dep["spec"]["replicas"] == 2
    assert not find(rendered["production"], "Deployment", "ingest")  # ClickHouse's Kafka engine there


def test_generated_token_is_long_and_kept_in_the_chart_secret(rendered):
    import base64

    secret = one(rendered["default"], "Secret", "config")
    assert len(base64.b64decode(secret["data"]["token"])) >= 32
    assert not find(rendered["production"], "Secret")  # everything comes from existing Secrets there


def test_network_policy_limits_who_reaches_the_api(rendered):
    prod = rendered["production"]
    api = [p for p in find(prod, "NetworkPolicy") if p["metadata"]["name"] == "phobos-api"][0]
    assert api["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    (rule,) = api["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in rule["from"]] == \
        ["ingress-nginx", "monitoring"]
    closed = [p for p in find(prod, "NetworkPolicy") if p["metadata"]["name"] == "phobos-no-ingress"][0]
    assert closed["spec"]["ingress"] == [] and closed["spec"]["policyTypes"] == ["Ingress"]
    # Tracers posting over HTTP come from the nodes' addresses (host network).
    api = [p for p in find(rendered["ingest"], "NetworkPolicy") if p["metadata"]["name"] == "phobos-api"][0]
    assert {"ipBlock": {"cidr": "10.0.0.0/16"}} in api["spec"]["ingress"][0]["from"]
    assert not find(rendered["default"], "NetworkPolicy")


# --- the capability set is enough, and each part of it is needed ---------------------------

CAP_NUMBERS = {"BPF": 39, "PERFMON": 38, "SYS_RESOURCE": 24, "SYS_PTRACE": 19, "SYS_ADMIN": 21}


def _bounding_caps() -> set[int]:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("CapBnd:"))
    mask = int(line.split()[1], 16)
    return {bit for bit in range(64) if mask >> bit & 1}


@pytest.fixture(scope="module")
def tracer_caps(rendered, bpf_host) -> list[str]:
    """The default chart's tracer capabilities, if this machine can run the tracer as root."""
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) is missing")
    container = pod_spec(one(rendered["default"], "DaemonSet", "tracer"))["containers"][0]
    return container["securityContext"]["capabilities"]["add"]


def _trace_with(caps: list[str]) -> subprocess.CompletedProcess:
    """`phobos trace` as uid 0 holding only ``caps`` - what the container gets."""
    bounding = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    cmd = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--",
           sys.executable, "-m", "tracer.agent",
           "--duration", "3", "--interval", "1", "--metrics-port", "0", "--sink", "stdout", "--mode", "tracepoint"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.bpf
@pytest.mark.slow
def test_tracer_runs_with_only_the_charts_capabilities(tracer_caps):
    # A sandbox may lack some capability in its own bounding set (SYS_RESOURCE is
    # only needed on kernels < 5.11); grant what this machine has of the chart's list.
    available = _bounding_caps()
    caps = [c for c in tracer_caps if CAP_NUMBERS[c] in available]
    assert {"BPF", "PERFMON"} <= set(caps)
    result = _trace_with(caps)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "phobos-trace-summary" in result.stderr
    records = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert records, "no records traced"


@pytest.mark.bpf
def test_tracer_without_bpf_capabilities_says_what_is_missing(tracer_caps):
    result = _trace_with([c for c in tracer_caps if c not in ("BPF", "PERFMON")])
    assert result.returncode == 2
    assert "CAP_BPF" in result.stderr and "CAP_PERFMON" in result.stderr


# --- the chart and the code agree ------------------------------------------------------------


def _known_env(*paths: str) -> set[str]:
    return {m for p in paths for m in re.findall(r"PHOBOS_[A-Z_]+", (ROOT / p).read_text())}


def test_tracer_env_names_are_the_agents(rendered):
    from tracer.settings import TRACER_SETTINGS

    known = _known_env("tracer/agent.py", "tracer/kafka_sink.py") | TRACER_SETTINGS.variables()
    for variant in ("default", "production", "ingest"):
        container = pod_spec(one(rendered[variant], "DaemonSet", "tracer"))["containers"][0]
        for name in env_of(container):
            # PHOBOS_KAFKA_* are librdkafka properties, passed through by name.
            assert name in known or name.startswith("PHOBOS_KAFKA_"), f"the tracer reads no {name}"


def test_api_env_names_are_the_apis(rendered):
    from api.config import SETTINGS

    known = _known_env("api/config.py", "api/commands/phobos.py", "api/storage/__init__.py",
                       "api/storage/migrations.py") | SETTINGS.variables() | {"PHOBOS_CLICKHOUSE_PASSWORD"}
    for variant in ("default", "production"):
        container = pod_spec(one(rendered[variant], "Deployment", "api"))["containers"][0]
        for name in env_of(container):
            assert name in known or not name.startswith("PHOBOS_"), f"the API reads no {name}"
        assert env_of(container)["HOME"]["value"] == "/tmp"  # the root filesystem is read-only


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_api_accepts_the_charts_settings(rendered, variant):
    """The API's own config loader takes every value the chart sets (no 1.6e+07 for an int)."""
    from api.config import load_config

    container = pod_spec(one(rendered[variant], "Deployment", "api"))["containers"][0]
    environ = {name: e["value"] for name, e in env_of(container).items() if "value" in e}
    config = load_config(environ=environ)
    assert config["MAX_BODY_BYTES"] == 16 * 1024 * 1024
    assert config["SQL_MAX_BYTES"] == 64 * 1024 * 1024


def test_numbers_in_environment_values_are_plain(rendered):
    for variant, docs in rendered.items():
        for doc in workloads(docs):
            spec = pod_spec(doc)
            for container in spec.get("initContainers", []) + spec["containers"]:
                for e in container.get("env", []):
                    assert not re.fullmatch(r"[0-9.]+e[+-][0-9]+", e.get("value", "")), (variant, e)


def test_kafka_environment_is_valid_librdkafka_configuration(rendered):
    """PHOBOS_KAFKA_X_Y becomes librdkafka's x.y in the tracer and the consumer: the names must exist."""
    try:
        import confluent_kafka
    except ImportError as err:
        require(False, f"confluent-kafka is not installed ({err}): pip install -e .")
    container = pod_spec(one(rendered["ingest"], "Deployment", "ingest"))["containers"][0]
    conf = {"bootstrap.servers": "127.0.0.1:1"}
    for name, e in env_of(container).items():
        if name.startswith("PHOBOS_KAFKA_") and "value" in e:
            key = name[len("PHOBOS_KAFKA_"):].lower().replace("_", ".")
            if not key.endswith(".location"):  # files that exist only in the pod
                conf[key] = e["value"]
    conf["sasl.password"] = "from-the-secret"
    assert {"security.protocol", "sasl.mechanism", "sasl.username"} <= set(conf)
    confluent_kafka.Producer(conf).flush(0)  # unknown or bad properties raise here


def test_api_serves_the_probed_paths():
    from api.app import create_app

    rules = {rule.rule for rule in create_app({"TESTING": True}).url_map.iter_rules()}
    assert {"/healthz", "/readyz", "/api/v1/ingest"} <= rules


def test_job_and_consumer_commands_parse(rendered):
    import argparse

    from api.commands import ingest as kafka_ingest
    from api.commands import phobos

    job = pod_spec(one(rendered["production"], "Job", "migrate"))["containers"][0]["command"]
    migrate = argparse.ArgumentParser()
    migrate.add_argument("--cluster")
    kafka_ingest.configure_migrate_parser(migrate)
    args = migrate.parse_args(job[2:])
    assert args.cluster == "phobos_cluster" and args.kafka and args.topic_prefix == "phobos"
    assert phobos.build_parser().parse_args(["migrate", "--cluster=phobos_cluster"]).cluster == "phobos_cluster"

    consumer = pod_spec(one(rendered["ingest"], "Deployment", "ingest"))["containers"][0]["command"]
    args = kafka_ingest.configure_parser(argparse.ArgumentParser()).parse_args(consumer[2:])
    assert args.kafka == "k1:9092,k2:9092" and args.topic_prefix == "phobos"


# --- values.schema.json ----------------------------------------------------------------------

BAD_VALUES = [
    (["--set", "store.type=clickhouse"], "/clickhouse/host"),
    (["--set", "store.type=postgres"], "/store/type"),
    (["--set", "api.workers=4"], "/api/workers"),  # chDB: one worker
    (["--set", "tracer.mode=magic"], "/tracer/mode"),
    (["--set", "tracer.interval=0"], "/tracer/interval"),
    (["--set", "tracer.capabilities={BPF,SYS_ADMIN}"], "/tracer/capabilities/1"),
    (["--set", "tracer.capabilitiez={BPF}"], "capabilitiez"),
    (["--set", "tracer.resources=null"], "resources"),
    (["--set", "tracer.resources.limits=null"], "limits"),
    (["--set", "api.podSecurityContext.runAsNonRoot=false"], "/api/podSecurityContext/runAsNonRoot"),
    (["--set", "api.port=80"], "/api/port"),
    (["--set", "store.type=clickhouse,clickhouse.host=ch,ingest.enabled=true"], "/kafka/brokers"),
    (["--set", "store.type=clickhouse,clickhouse.host=ch,clickhouse.kafkaEngine=true,kafka.brokers={k:9092},"
      "ingest.enabled=true"], "/clickhouse/kafkaEngine"),
    (["--set", "store.type=clickhouse,clickhouse.host=ch,kafka.brokers={kafka-without-port}"], "/kafka/brokers/0"),
    (["--set", "kafka.brokers={k:9092}"], "/kafka/brokers"),  # chDB: nothing would consume the topics
    (["--set", "kafka.sasl.enabled=true"], "/kafka/sasl"),
    (["--set", "kafka.tls.enabled=true"], "/kafka/tls/secretName"),
    (["--set", "clickhouse.cluster=my cluster"], "/clickhouse/cluster"),
    (["--set", "clickhouse.database=default"], "/clickhouse/database"),
    (["--set", "auth.token=short"], "/auth/token"),
    (["--set", "api.ingress.enabled=true,api.ingress.host="], "/api/ingress/host"),
]


@pytest.mark.parametrize("args,path", BAD_VALUES, ids=[" ".join(a[1:]) for a, _ in BAD_VALUES])
def test_schema_refuses_bad_values_with_the_path(helm, args, path):
    result = _template(helm, *args)
    assert result.returncode != 0, f"{args} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert path in result.stderr, result.stderr


def test_notes_tell_how_to_open_the_ui(helm, tmp_path):
    # `helm template` leaves NOTES.txt out; render it through a probe template.
    chart = tmp_path / "phobos"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
        'data: {notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | quote }}}\n'
    )

    def notes(*args):
        docs = render(helm, *args, chart=chart)
        return [d for d in docs if d["metadata"]["name"] == "notes"][0]["data"]["notes"]

    text = notes()
    assert "kubectl -n phobos port-forward service/phobos-api 8080:8080" in text
    assert "http://127.0.0.1:8080/" in text
    assert "get secret phobos" in text
    assert "https://phobos.example.com/" in notes("-f", str(PRODUCTION))


# --- images ------------------------------------------------------------------------------------------


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DOCKER / name).read_text()
    logical, out = "", []
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if logical and line.lstrip().startswith("#"):
            continue
        logical += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            instr, _, rest = logical.strip().partition(" ")
            out.append((instr.upper(), rest.strip()))
            logical = ""
    assert not logical, f"{name}: dangling continuation"
    return out


def _setup_cfg_pins() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pins = {}
    for line in cfg["options"]["install_requires"].strip().splitlines():
        name, _, version = line.strip().partition("==")
        pins[name.lower()] = version
    return pins


def _copied_sources(instructions):
    for instr, args in instructions:
        if instr in ("COPY", "ADD") and "--from=" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            yield from parts[:-1]


@pytest.mark.parametrize("name", ["api.Dockerfile", "tracer.Dockerfile"])
def test_dockerfile_parses_and_copies_files_that_exist(name):
    instructions = dockerfile(name)
    known = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "USER", "WORKDIR", "ENTRYPOINT", "CMD", "EXPOSE",
             "LABEL", "HEALTHCHECK", "STOPSIGNAL", "VOLUME", "SHELL"}
    assert {i for i, _ in instructions} <= known
    assert instructions[0][0] in ("FROM", "ARG")
    for src in _copied_sources(instructions):  # build context: the repository root
        assert list(ROOT.glob(src)), f"{name} copies {src}, which does not exist"
    for instr, args in instructions:
        if instr == "RUN" and "pip install" in args:
            for name_, version in re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==([0-9][^\s\"']*)", args):
                pinned = _setup_cfg_pins().get(name_.lower())
                assert pinned in (None, version), f"{name_}=={version} but setup.cfg pins {pinned}"


def test_api_image_is_slim_bookworm_and_non_root_matching_the_chart():
    instructions = dockerfile("api.Dockerfile")
    froms = [a for i, a in instructions if i == "FROM"]
    assert froms[-1].split()[0] == "python:3.11-slim-bookworm"
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1].split(":")[0] == "10001", "the final image must run as the non-root uid 10001"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["api"]["podSecurityContext"]["runAsUser"] == 10001
    cmd = " ".join(a for i, a in instructions if i in ("CMD", "ENTRYPOINT"))
    assert "gunicorn" in cmd and "api.app:create_app()" in cmd
    # gunicorn comes in as a pinned dependency of the wheel, installed with its dependencies.
    assert "gunicorn" in _setup_cfg_pins()
    installs = [a for i, a in instructions if i == "RUN" and "phobos-*.whl" in a]
    assert installs and all("pip install" in a and "--no-deps" not in a for a in installs), installs


def test_tracer_image_takes_bcc_from_debian_and_headers_from_the_host():
    instructions = dockerfile("tracer.Dockerfile")
    froms = [a for i, a in instructions if i == "FROM"]
    assert froms[-1].split()[0].startswith("debian:bookworm")
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert "python3-bpfcc" in runs
    assert "linux-headers" not in runs, "headers must match the host's kernel: mounted, not baked in"
    assert re.search(r"pip install[^&;]*--no-deps", runs), "the wheel's own deps would drag chDB in"
    assert " bcc" not in runs.split("apt-get")[0]  # never the unrelated PyPI package `bcc`
    assert [json.loads(a) for i, a in instructions if i in ("CMD", "ENTRYPOINT")] == [
        ["/opt/phobos/bin/phobos", "trace"]]


# --- plain hosts: systemd units ------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(SYSTEMD / name)
    return parser


def test_tracer_unit_grants_capabilities_not_full_root():
    u = unit("phobos-tracer.service")
    svc = u["Service"]
    assert svc["ExecStart"].split() == ["/opt/phobos/venv/bin/phobos", "trace"]
    caps = set(svc["CapabilityBoundingSet"].split())
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_RESOURCE"} <= caps
    assert "CAP_SYS_ADMIN" not in caps
    assert svc["AmbientCapabilities"].split() and set(svc["AmbientCapabilities"].split()) <= caps
    assert svc.get("NoNewPrivileges") == "yes"
    assert svc["Restart"] in ("always", "on-failure")
    assert "EnvironmentFile" in svc


def test_api_unit_runs_as_an_unprivileged_user():
    svc = unit("phobos-api.service")["Service"]
    assert svc["User"] not in ("root", "0")
    assert "gunicorn" in svc["ExecStart"] and "api.app:create_app()" in svc["ExecStart"]
    assert svc.get("NoNewPrivileges") == "yes"
    assert svc.get("ProtectSystem") == "strict"
    assert svc.get("CapabilityBoundingSet", "x") == ""
    env_example = (SYSTEMD / "phobos.env.example").read_text()
    assert "PHOBOS_TOKEN=" in env_example and "PHOBOS_STORE=" in env_example


@pytest.mark.parametrize("name", ["phobos-tracer.service", "phobos-api.service"])
def test_systemd_accepts_the_unit(name, tmp_path):
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze (systemd) is not installed")
    # verify wants the programs to exist; point them at /bin/true.
    text = re.sub(r"^(ExecStart|ExecStartPre)=\S+", r"\1=/bin/true", (SYSTEMD / name).read_text(), flags=re.M)
    path = tmp_path / name
    path.write_text(text)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown" not in result.stderr, result.stderr


def test_tracer_unit_keeps_kernel_headers_visible():
    svc = unit("phobos-tracer.service")["Service"]
    assert svc.get("ProtectKernelModules", "no") == "no", "it hides /lib/modules from BCC"
    assert svc["LimitMEMLOCK"] == "infinity"


def test_tracer_can_be_left_out(rendered):
    docs = rendered["api-only"]
    assert not find(docs, "DaemonSet")
    assert [sa["metadata"]["name"] for sa in find(docs, "ServiceAccount")] == ["phobos-api"]
    assert not find(docs, "PersistentVolumeClaim")
    (data,) = [v for v in pod_spec(one(docs, "Deployment", "api"))["volumes"] if v["name"] == "data"]
    assert data["emptyDir"] == {}


def test_install_script_is_idempotent(helm):
    require((TOOLS_BIN / "helm").exists() and (TOOLS_BIN / "kubernetes-validate").exists(),
            f"the tools came from elsewhere than helm/tools/install.sh (nothing in {TOOLS_BIN})")
    result = subprocess.run(["bash", str(ROOT / "helm" / "tools" / "install.sh")], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PHOBOS_TOOLS": str(TOOLS_BIN.parent)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("already in") == 2, result.stderr
    assert "building" not in result.stderr


def test_install_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(ROOT / "helm" / "tools" / "install.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_analysts_sql_uses_the_read_only_user_in_production(rendered):
    """Server mode: /api/v1/sql logs in as the user of sql/server/analyst.sql, with limits."""
    (container,) = pod_spec(one(rendered["production"], "Deployment", "api"))["containers"]
    env = env_of(container)
    assert env["PHOBOS_SQL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "phobos-clickhouse-analyst", "key": "password"}
    assert env["PHOBOS_SQL_STORE"]["value"].startswith("clickhouse://phobos_analyst:$(PHOBOS_SQL_PASSWORD)@")
    assert env["PHOBOS_SQL_STORE"]["value"].endswith("/phobos?secure=1")
    assert int(env["PHOBOS_SQL_MAX_MEMORY"]["value"]) > 0 and int(env["PHOBOS_SQL_CONCURRENCY"]["value"]) >= 1
    # the embedded default has no such user: the reader is a read-only chDB session
    (default,) = pod_spec(one(rendered["default"], "Deployment", "api"))["containers"]
    assert "PHOBOS_SQL_STORE" not in env_of(default)


def test_a_resolution_stage_runs_beside_a_clickhouse_store(rendered):
    """Server mode: one `phobos resolve` pod, recreated (a second copy would stand by on the lease)."""
    dep = one(rendered["production"], "Deployment", "resolve")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    (container,) = pod_spec(dep)["containers"]
    assert container["command"] == ["phobos", "resolve"]
    env = env_of(container)
    assert env["PHOBOS_STORE"]["value"].startswith("clickhouse://") and env["PHOBOS_RESOLVE_SETTLE"]["value"]
    # chDB: the API pod resolves in its own process
    assert not find(rendered["default"], "Deployment", "resolve")


def test_span_retention_reaches_phobos_migrate(helm):
    """store.spanTtlHours becomes PHOBOS_SPAN_TTL_HOURS of the migrate job; unset, the store keeps its own."""
    def migrate_env(*args):
        (container,) = pod_spec(one(render(helm, "-f", str(PRODUCTION), *args), "Job", "migrate"))["containers"]
        return env_of(container)

    assert migrate_env("--set", "store.spanTtlHours=12")["PHOBOS_SPAN_TTL_HOURS"]["value"] == "12"
    assert "PHOBOS_SPAN_TTL_HOURS" not in migrate_env()
    refused = _template(helm, "--set", "store.spanTtlHours=0")
    assert refused.returncode != 0 and "spanTtlHours" in refused.stderr
