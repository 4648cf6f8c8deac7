"""deploy/k8s: the Kubernetes deployment of the team setup, checked offline.

Every built-in object validates against the OpenAPI schemas of a pinned Kubernetes
version (kubernetes-validate, strict: an unknown field is an error, as the API server's
strict field validation makes it); KEDA's ScaledObject, which no such schema covers,
against a JSON schema written here from KEDA's CRD. Then what no schema sees: that
selectors select, ports and probes meet, names agree across files, Secrets hold
placeholders only, autoscalers never overlap, and the JupyterHub snippet's Python config
runs and points at the engine Service.

"Build" below resolves a kustomization's `resources` the way kustomize does (a file is a
manifest, a folder another kustomization); no kustomize or kubectl binary is needed.
"""

from __future__ import annotations

import base64
import copy
import re
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ds_engine.templates import fim_format
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"

# The oldest Kubernetes the setup is for: zero-to-jupyterhub's current chart needs 1.32,
# and every API used here is GA there. kubernetes-validate bundles schemas per minor
# version (1.25 ... 1.37 in the installed release).
KUBERNETES_VERSION = "1.32"

# Helm values, not Kubernetes objects.
HELM_VALUES = {K8S / "z2jh-values.yaml"}

# The variants `kubectl apply -k` builds: folder -> what it must run.
VARIANTS = {"gpu": K8S, "cpu": K8S / "cpu"}

NAMESPACE = "jupyter-ds"
SECRET_TEMPLATE = K8S / "secret.example.yaml"
PLACEHOLDER = re.compile(r"^(REPLACE_ME|CHANGE_ME|<[^<>\n]+>)$")


# --------------------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def kustomization_files() -> list[Path]:
    return [p for p in yaml_files() if p.name == "kustomization.yaml"]


def manifest_files() -> list[Path]:
    return [p for p in yaml_files() if p.name != "kustomization.yaml" and p not in HELM_VALUES]


def all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in manifest_files() for d in load_docs(p)]


def build(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k folder` would send (kustomize's resource resolution;
    none of these kustomizations transforms anything)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    objects: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        target = (folder / entry).resolve()
        objects += build(target) if target.is_dir() else load_docs(target)
    return objects


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def containers(deployment: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec["containers"], *(spec.get("initContainers", []) if init else [])]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A port number, or a port name resolved against the container's ports."""
    if isinstance(port, int):
        assert any(p["containerPort"] == port for p in container.get("ports", [])), (
            f"{container['name']} does not expose {port}")
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"{container['name']} has no port named {port!r}"
    return named[0]


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` / `--name value` in an argument list; "" for a bare
    flag; None when absent."""
    for i, arg in enumerate(args):
        if arg == name:
            nxt = args[i + 1] if i + 1 < len(args) else ""
            return "" if nxt.startswith("--") else nxt
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def secret_refs(deployment: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        env["name"]: (env["valueFrom"]["secretKeyRef"]["name"],
                      env["valueFrom"]["secretKeyRef"]["key"])
        for c in containers(deployment)
        for env in c.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }


def z2jh_values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "z2jh-values.yaml").read_text(encoding="utf-8"))


def z2jh_python() -> str:
    files = z2jh_values()["singleuser"]["extraFiles"]
    (entry,) = [f for f in files.values() if f["mountPath"].endswith("jupyter_server_config.py")]
    return entry["stringData"]


def run_jupyter_config(source: str) -> Config:
    """Runs a jupyter_server_config.py as Jupyter's loader does: `get_config()` returns
    the Config object the file fills in."""
    config = Config()
    exec(compile(source, "jupyter_server_config.py", "exec"), {"get_config": lambda: config})
    return config


# ------------------------------------------------------------- KEDA's ScaledObject schema

_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_NUMBER_STRING = {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*$"}

# Written from KEDA v2's CRD (config/crd/bases/keda.sh_scaledobjects.yaml) and the
# Prometheus scaler's documented metadata: what spec may hold, required fields, types.
# The CRD's one CEL rule (min <= max) is in validate().
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},  # ObjectMeta: checked apart
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {**_INT32, "minimum": 1},
                "cooldownPeriod": {**_INT32, "minimum": 0},
                "initialCooldownPeriod": {**_INT32, "minimum": 0},
                "idleReplicaCount": {**_INT32, "minimum": 0},
                "minReplicaCount": {**_INT32, "minimum": 0},
                "maxReplicaCount": {**_INT32, "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": {**_INT32, "minimum": 0},
                        "replicas": {**_INT32, "minimum": 0},
                        "behavior": {"enum": ["static", "currentReplicas",
                                              "currentReplicasIfHigher",
                                              "currentReplicasIfLower", "scalingModifiers"]},
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            # behavior: an autoscaling/v2 HPA's, validated as one apart
                            "properties": {"name": {"type": "string"},
                                           "behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string", "minLength": 1},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"enum": ["TriggerAuthentication",
                                                      "ClusterTriggerAuthentication"]},
                                },
                            },
                            # every value a string: `threshold: 2` unquoted is refused
                            "metadata": {"type": "object",
                                         "additionalProperties": {"type": "string"}},
                        },
                        "allOf": [{
                            "if": {"properties": {"type": {"const": "prometheus"}}},
                            "then": {"properties": {"metadata": {
                                "required": ["serverAddress", "query", "threshold"],
                                "properties": {
                                    "serverAddress": {"type": "string",
                                                      "pattern": r"^https?://[^\s/]+"},
                                    "query": {"type": "string", "minLength": 1},
                                    "threshold": _NUMBER_STRING,
                                    "activationThreshold": _NUMBER_STRING,
                                    "ignoreNullValues": {"enum": ["true", "false"]},
                                    "unsafeSsl": {"enum": ["true", "false"]},
                                },
                            }}},
                        }],
                    },
                },
            },
        },
    },
}

CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_SCHEMA}


def validate(obj: dict[str, Any]) -> None:
    """Raises if `obj` is not a valid object of its kind: kubernetes_validate.ValidationError
    (a jsonschema.ValidationError) for built-in kinds, jsonschema.ValidationError for the
    CRDs above, AssertionError for a kind neither knows."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return
    except kubernetes_validate.SchemaNotFoundError:
        pass
    key = (obj.get("apiVersion"), obj.get("kind"))
    assert key in CRD_SCHEMAS, (
        f"{key}: neither a Kubernetes {KUBERNETES_VERSION} kind nor a CRD with a schema here")
    jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).validate(obj)
    # The parts that are Kubernetes types, by the Kubernetes schemas.
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
        KUBERNETES_VERSION, strict=True)
    if obj["kind"] == "ScaledObject":
        spec = obj["spec"]
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            raise jsonschema.ValidationError(
                "minReplicaCount must be less than or equal to maxReplicaCount")
        hpa = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
        if "behavior" in hpa:
            kubernetes_validate.validate(synthetic_hpa(behavior=hpa["behavior"]),
                                         KUBERNETES_VERSION, strict=True)


def synthetic_hpa(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "check"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "check"}, "maxReplicas": 1, **spec},
    }


# ------------------------------------------------------------------------ the schemas


def test_the_pinned_version_has_schemas():
    assert kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
        KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize(
    "path,index",
    [(p, i) for p in manifest_files() for i in range(len(load_docs(p)))],
    ids=lambda v: str(v.relative_to(K8S)) if isinstance(v, Path) else str(v),
)
def test_every_manifest_validates(path, index):
    obj = load_docs(path)[index]
    validate(obj)


def test_there_are_manifests_of_each_kind():
    kinds = Counter(o["kind"] for _, o in all_objects())
    for kind in ("Namespace", "Deployment", "Service", "PodDisruptionBudget",
                 "ScaledObject", "HorizontalPodAutoscaler", "NetworkPolicy", "Secret"):
        assert kinds[kind] >= 1, kind


DELETE = object()


def _case_id(path: str, value: Any) -> str:
    return f"{path}=<deleted>" if value is DELETE else f"{path}={value!r}"


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    if value is DELETE:
        del obj[last]
    else:
        obj[last] = value


def _deployment() -> dict[str, Any]:
    return copy.deepcopy(the(build(K8S), "Deployment"))


BROKEN_DEPLOYMENTS = [
    ("spec.replicas", "two", "'two' is not of type 'integer'"),
    ("spec.replica", 2, "'replica' was unexpected"),  # strict: unknown fields
    ("spec.template.spec.containers.0.ports", 8000, "is not of type 'array'"),
    ("spec.template.spec.containers.0.name", DELETE, "'name' is a required property"),
    ("spec.template.spec.containers.0.resources.limits", ["nvidia.com/gpu"], "is not of type"),
]


@pytest.mark.parametrize("path,value,message", BROKEN_DEPLOYMENTS,
                         ids=[_case_id(p, v) for p, v, _ in BROKEN_DEPLOYMENTS])
def test_the_validator_rejects_a_broken_deployment(path, value, message):
    validate(_deployment())  # the real one passes
    broken = _deployment()
    _set(broken, path, value)
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        validate(broken)
    assert message in err.value.message
    assert err.value.version == KUBERNETES_VERSION


def test_an_unknown_kind_is_not_waved_through():
    with pytest.raises(AssertionError, match="neither"):
        validate({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob",
                  "metadata": {"name": "x"}, "spec": {}})
    with pytest.raises(AssertionError, match="neither"):
        validate({"apiVersion": "apps/v2", "kind": "Deployment", "metadata": {"name": "x"}})


def _scaled_object() -> dict[str, Any]:
    return copy.deepcopy(the(build(K8S), "ScaledObject"))


_BEHAVIOR = "spec.advanced.horizontalPodAutoscalerConfig.behavior"


BROKEN_SCALED_OBJECTS = [
    ("spec.scaleTargetRef.name", DELETE, "'name' is a required property"),
    ("spec.scaleTargetRef.name", "", "should be non-empty"),
    ("spec.minReplicaCount", "2", "is not of type 'integer'"),
    ("spec.maxReplicaCount", 0, "less than the minimum of 1"),
    ("spec.minReplicaCount", 11, "less than or equal to maxReplicaCount"),
    ("spec.maxReplicas", 10, "'maxReplicas' was unexpected"),
    ("spec.triggers", [], "should be non-empty"),
    ("spec.triggers.0.metadata.threshold", 2, "is not of type 'string'"),
    ("spec.triggers.0.metadata.threshold", "two", "does not match"),
    ("spec.triggers.0.metadata.query", DELETE, "'query' is a required property"),
    ("spec.triggers.0.metadata.serverAddress", "prometheus:9090", "does not match"),
    ("spec.triggers.0.metricType", "Average", "is not one of"),
    (_BEHAVIOR + ".scaleDown.policies.0.periodSeconds", "120", "is not of type 'integer'"),
    (_BEHAVIOR + ".scaleDown.window", 300, "'window' was unexpected"),
    ("metadata.labels", {"app": 1}, "is not of type 'string'"),
]


@pytest.mark.parametrize("path,value,message", BROKEN_SCALED_OBJECTS,
                         ids=[_case_id(p, v) for p, v, _ in BROKEN_SCALED_OBJECTS])
def test_the_scaled_object_schema_rejects_broken_ones(path, value, message):
    validate(_scaled_object())  # the real one passes
    broken = _scaled_object()
    _set(broken, path, value)
    with pytest.raises(jsonschema.ValidationError) as err:
        validate(broken)
    assert message in err.value.message


# ------------------------------------------------------------------- kustomizations


@pytest.mark.parametrize("path", kustomization_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomizations_list_only_what_exists(path):
    kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, (
        "a transformer here would have to be emulated by build()")
    assert kustomization["resources"]
    folder = path.parent
    for entry in kustomization["resources"]:
        target = (folder / entry).resolve()
        assert target.exists(), f"{entry} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{entry}: no kustomization"
        else:
            # kustomize's default load restrictor: files only from in or under the folder
            assert target.is_relative_to(folder), f"{entry} is outside {folder}"
            assert target in manifest_files()
    objects = build(folder)
    ids = Counter((o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
                  for o in objects)
    assert all(n == 1 for n in ids.values()), f"duplicate objects: {ids}"


def test_every_manifest_is_applied_by_something_or_said_to_be_optional():
    applied = set()
    for k in kustomization_files():
        for entry in yaml.safe_load(k.read_text(encoding="utf-8"))["resources"]:
            target = (k.parent / entry).resolve()
            if target.is_file():
                applied.add(target)
    for path in manifest_files():
        if path not in applied:
            assert "not in any kustomization" in path.read_text(encoding="utf-8").lower(), (
                f"{path.relative_to(K8S)} is in no kustomization and does not say why")


def test_the_secret_template_is_applied_by_no_kustomization():
    for folder in {k.parent for k in kustomization_files()}:
        assert not [o for o in build(folder) if o["kind"] == "Secret"], folder


def test_keda_and_the_hpa_fallback_are_never_applied_together():
    for folder in {k.parent for k in kustomization_files()}:
        kinds = {o["kind"] for o in build(folder)}
        assert not {"ScaledObject", "HorizontalPodAutoscaler"} <= kinds, folder


# ---------------------------------------------------------------- each variant, built

variant = pytest.mark.parametrize("name", sorted(VARIANTS))


@variant
def test_variant_holds_one_of_each(name):
    objects = build(VARIANTS[name])
    for kind in ("Namespace", "Deployment", "Service", "PodDisruptionBudget",
                 "NetworkPolicy", "ScaledObject"):
        the(objects, kind)
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]


@variant
def test_everything_lives_in_the_namespace(name):
    objects = build(VARIANTS[name])
    assert the(objects, "Namespace")["metadata"]["name"] == NAMESPACE
    for obj in objects:
        if obj["kind"] != "Namespace":
            # explicit in each file, so `kubectl apply -f` of one file lands there too
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


@variant
def test_the_deployment_selects_its_own_pods(name):
    deployment = the(build(VARIANTS[name]), "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    spec = deployment["spec"]["template"]["spec"]
    for constraint in spec.get("topologySpreadConstraints", []):
        assert matches(constraint["labelSelector"]["matchLabels"], labels)
    # the autoscaler owns the count: a value here would reset it on every apply
    assert "replicas" not in deployment["spec"]


@variant
def test_the_service_reaches_the_pods_on_their_http_port(name):
    objects = build(VARIANTS[name])
    deployment, service = the(objects, "Deployment"), the(objects, "Service")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["port"] == 8000
    (main,) = containers(deployment, init=False)
    assert container_port(main, port["targetPort"]) == 8000


@variant
def test_probes_ask_health_on_the_port_the_service_targets(name):
    objects = build(VARIANTS[name])
    deployment, service = the(objects, "Deployment"), the(objects, "Service")
    (main,) = containers(deployment, init=False)
    target = container_port(main, service["spec"]["ports"][0]["targetPort"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = main[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert container_port(main, get["port"]) == target, probe
    # loading a model takes minutes: the startup probe must allow them before liveness
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


@variant
def test_the_disruption_budget_covers_the_pods(name):
    objects = build(VARIANTS[name])
    deployment, pdb = the(objects, "Deployment"), the(objects, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"],
                   deployment["spec"]["template"]["metadata"]["labels"])
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1


@variant
def test_the_scaled_object_targets_the_deployment(name):
    objects = build(VARIANTS[name])
    deployment, scaled = the(objects, "Deployment"), the(objects, "ScaledObject")
    ref = scaled["spec"]["scaleTargetRef"]
    assert ref["name"] == deployment["metadata"]["name"]
    assert ref.get("kind", "Deployment") == "Deployment"
    assert ref.get("apiVersion", "apps/v1") == "apps/v1"
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 10)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger.get("metricType", "AverageValue") == "AverageValue"  # per replica
    query = trigger["metadata"]["query"]
    assert "vllm:num_requests_waiting" in query
    assert query.lstrip().startswith("sum(")
    assert f'namespace="{NAMESPACE}"' in query
    # the Deployment's pods (<deployment>-<replicaset hash>-<suffix>), not another
    # Deployment's whose name starts the same (ds-engine-chat-...)
    pod = re.search(r'pod=~"([^"]+)"', query)
    assert pod, query
    name = deployment["metadata"]["name"]
    assert re.fullmatch(pod.group(1), f"{name}-7d4b9c8f6-x2x9z")
    assert not re.fullmatch(pod.group(1), f"{name}-chat-7d4b9c8f6-x2x9z")
    assert float(trigger["metadata"]["threshold"]) > 0


@variant
def test_the_pods_publish_their_metrics(name):
    deployment = the(build(VARIANTS[name]), "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    (main,) = containers(deployment, init=False)
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container_port(main, int(annotations["prometheus.io/port"])) == 8000


@variant
def test_pods_run_unprivileged(name):
    deployment = the(build(VARIANTS[name]), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"].get("runAsUser", 1) != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert not [v for v in spec["volumes"] if "hostPath" in v]  # refused by `restricted`
    for c in containers(deployment):
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, c["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not ctx.get("privileged"), c["name"]
        assert not ctx["capabilities"].get("add"), c["name"]


@variant
def test_the_api_key_comes_from_the_secret_template(name):
    deployment = the(build(VARIANTS[name]), "Deployment")
    secret = the(load_docs(SECRET_TEMPLATE), "Secret")
    refs = set(secret_refs(deployment).values())
    assert refs == {(secret["metadata"]["name"], key) for key in secret["stringData"]}
    for c in containers(deployment):
        for env in c.get("env", []):
            assert "KEY" not in env["name"] or "valueFrom" in env, (c["name"], env["name"])


@variant
def test_the_network_policy_admits_single_user_servers_on_8000_only(name):
    objects = build(VARIANTS[name])
    deployment, policy = the(objects, "Deployment"), the(objects, "NetworkPolicy")
    assert matches(policy["spec"]["podSelector"]["matchLabels"],
                   deployment["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = []
    for rule in policy["spec"]["ingress"]:
        assert [(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]] == [("TCP", 8000)]
        for peer in rule["from"]:
            # always both: a namespace and pods in it, never "anything in the cluster"
            assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]["matchLabels"]
            sources.append(peer["podSelector"]["matchLabels"])
    assert {"component": "singleuser-server"} in sources


@variant
def test_images_are_pinned(name):
    deployment = the(build(VARIANTS[name]), "Deployment")
    for c in containers(deployment):
        image = c["image"]
        assert image == image.lower(), image  # image references are lower case
        repository, _, tag = image.rpartition(":")
        assert "/" in repository and tag and tag != "latest" and "/" not in tag, image


def test_gpu_variant_runs_vllm_on_one_gpu():
    deployment = the(build(VARIANTS["gpu"]), "Deployment")
    (main,) = containers(deployment, init=False)
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", main["image"])
    resources = main["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"].get("nvidia.com/gpu", "1") == "1"  # must equal the limit
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    args = main["args"]
    assert not args[0].startswith("--")  # the model, positionally
    assert flag(args, "--port") == "8000"
    assert flag(args, "--api-key") == "$(VLLM_API_KEY)"
    assert "VLLM_API_KEY" in secret_refs(deployment)
    for bare in ("--enable-lora", "--enable-prefix-caching"):
        assert flag(args, bare) == "", bare
    assert int(flag(args, "--max-loras") or 0) >= 1
    assert int(flag(args, "--max-model-len") or 0) >= 2048
    assert flag(args, "--served-model-name")
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "model-cache" in volumes
    # the HF cache must be on the model-cache volume, not in the image's filesystem
    env = {e["name"]: e.get("value") for e in main["env"]}
    model_cache_path = next(p for p, n in mounts.items() if n == "model-cache")
    assert env["HF_HOME"].startswith(model_cache_path + "/")


def test_cpu_variant_runs_ds_engine_serve():
    deployment = the(build(VARIANTS["cpu"]), "Deployment")
    (main,) = containers(deployment, init=False)
    command = main["command"]
    assert command[:2] == ["ds-engine", "serve"]
    assert flag(command, "--port") == "8000" and flag(command, "--host") == "0.0.0.0"
    model_path = flag(command, "--model-path")
    assert model_path and model_path.startswith("/models/")
    assert "DS_ENGINE_API_KEY" in secret_refs(deployment)
    resources = main["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert not any("nvidia.com/gpu" in r for r in resources.values())
    # the init container fetches the model into the folder the server loads
    (fetch,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert flag(fetch["command"], "--local-dir") == model_path
    assert {m["name"] for m in fetch["volumeMounts"]} >= {"model-cache"}


def test_both_variants_share_what_the_routing_tier_sees():
    gpu, cpu = (the(build(VARIANTS[v]), "Deployment") for v in ("gpu", "cpu"))
    assert gpu["metadata"]["name"] == cpu["metadata"]["name"]
    assert gpu["spec"]["selector"] == cpu["spec"]["selector"]


# -------------------------------------------------------------------- HPA fallback


def test_the_hpa_fallback_targets_the_same_deployment():
    (hpa,) = load_docs(K8S / "hpa-fallback" / "hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    for name in VARIANTS:
        deployment = the(build(VARIANTS[name]), "Deployment")
        scaled = the(build(VARIANTS[name]), "ScaledObject")
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
            "apps/v1", "Deployment", deployment["metadata"]["name"])
        assert hpa["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        # CPU utilization is relative to requests: without one the HPA cannot compute it
        (main,) = containers(deployment, init=False)
        assert main["resources"]["requests"]["cpu"]
        # the same pace as KEDA's HPA
        assert hpa["spec"]["behavior"] == (
            scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


# ------------------------------------------------------------------------- secrets

TOKEN_LIKE = re.compile(
    r"sk-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|(?<![0-9a-fA-F])[0-9a-fA-F]{32,}(?![0-9a-fA-F])|-----BEGIN [A-Z ]*PRIVATE KEY")


def test_secrets_hold_placeholders_only():
    secrets = [(p, o) for p, o in all_objects() if o["kind"] == "Secret"]
    assert secrets
    for path, secret in secrets:
        values = dict(secret.get("stringData", {}))
        for key, encoded in secret.get("data", {}).items():
            values[key] = base64.b64decode(encoded).decode()
        assert values, path
        for key, value in values.items():
            assert PLACEHOLDER.match(value), f"{path.name}: {key} holds a real-looking value"


def test_no_file_carries_a_real_looking_key():
    for path in yaml_files() + sorted(K8S.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        assert not TOKEN_LIKE.search(text), path.relative_to(K8S)
    assert TOKEN_LIKE.search("api-key: " + "3f" * 16)  # the pattern itself works


def test_the_placeholder_pattern_tells_placeholders_from_keys():
    assert PLACEHOLDER.match("REPLACE_ME") and PLACEHOLDER.match("<your key>")
    assert not PLACEHOLDER.match("s3cr3t-but-real") and not PLACEHOLDER.match("")


# ------------------------------------------------------------- routing tier (z2jh)


def test_z2jh_config_compiles_and_points_at_the_engine_service():
    source = z2jh_python()
    compile(source, "jupyter_server_config.py", "exec")
    assert "engine_class" in source
    config = run_jupyter_config(source)
    app = config.JupyterDsApp
    assert app.engine_class == "ds_engine.remote.RemoteEngine"
    options = app.engine_options
    assert set(options) >= {"url", "api_key_env", "model", "fim"}

    service = the(build(K8S), "Service")
    url = urllib.parse.urlsplit(options["url"])
    assert url.scheme == "http"
    assert url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert url.port == service["spec"]["ports"][0]["port"]
    assert url.path == "/v1"
    fim_format(options["fim"])  # a FIM family the routing tier knows (KeyError otherwise)

    # both servers serve the model under the name the routing tier asks for
    vllm = containers(the(build(VARIANTS["gpu"]), "Deployment"), init=False)[0]
    assert options["model"] == flag(vllm["args"], "--served-model-name")
    ds_engine = containers(the(build(VARIANTS["cpu"]), "Deployment"), init=False)[0]
    assert options["model"] == flag(ds_engine["command"], "--served-model-name")


def test_z2jh_api_key_comes_from_the_secret():
    options = run_jupyter_config(z2jh_python()).JupyterDsApp.engine_options
    env = z2jh_values()["singleuser"]["extraEnv"][options["api_key_env"]]
    assert "value" not in env
    ref = env["valueFrom"]["secretKeyRef"]
    secret = the(load_docs(SECRET_TEMPLATE), "Secret")
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    # z2jh turns the dict form into a container's env list: a valid EnvVar each
    env_list = [{"name": name, **spec} if isinstance(spec, dict) else {"name": name, "value": spec}
                for name, spec in z2jh_values()["singleuser"]["extraEnv"].items()]
    kubernetes_validate.validate({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
        "spec": {"containers": [{"name": "notebook", "image": "x:1", "env": env_list}]},
    }, KUBERNETES_VERSION, strict=True)


def test_z2jh_config_file_lands_where_jupyter_reads_it():
    files = z2jh_values()["singleuser"]["extraFiles"]
    for entry in files.values():
        assert set(entry) <= {"mountPath", "mode", "data", "stringData", "binaryData"}
        assert entry["mountPath"].startswith("/")
    (entry,) = files.values()
    # a system config dir (jupyter --paths), not ~/.jupyter on the user's volume and not
    # /etc/jupyter/jupyter_server_config.py, which the docker-stacks images ship
    assert entry["mountPath"] == "/usr/local/etc/jupyter/jupyter_server_config.py"


def test_z2jh_egress_reaches_the_engine_pods_on_8000_only():
    objects = build(K8S)
    deployment, namespace = the(objects, "Deployment"), the(objects, "Namespace")
    egress = z2jh_values()["singleuser"]["networkPolicy"]["egress"]
    # the rules are NetworkPolicyEgressRules, as z2jh pastes them into its policy
    kubernetes_validate.validate({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "check"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": egress},
    }, KUBERNETES_VERSION, strict=True)
    (rule,) = egress
    assert [(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]] == [("TCP", 8000)]
    (peer,) = rule["to"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": namespace["metadata"]["name"]}
    assert matches(peer["podSelector"]["matchLabels"],
                   deployment["spec"]["template"]["metadata"]["labels"])


def test_the_commented_routes_example_stays_a_comment():
    source = z2jh_python()
    assert "c.JupyterDsApp.routes" in source
    assert "routes" not in run_jupyter_config(source).JupyterDsApp


def test_the_remote_engine_takes_the_z2jh_options(monkeypatch):
    remote = pytest.importorskip("ds_engine.remote")
    from ds_engine.interface import EngineConfig

    options = run_jupyter_config(z2jh_python()).JupyterDsApp.engine_options
    assert set(options) <= set(remote.RemoteEngine.OPTIONS)
    monkeypatch.setenv(options["api_key_env"], "REPLACE_ME")
    # checks every option (URL, FIM family, key variable); connects to nothing
    engine = remote.RemoteEngine.from_config(EngineConfig(options=dict(options)))
    assert "ds-engine.jupyter-ds.svc:8000" in repr(engine)


# -------------------------------------------------------------------------- README


def test_the_readme_names_every_file():
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    for path in yaml_files():
        rel = str(path.relative_to(K8S))
        assert rel in readme, f"README.md does not say what {rel} is"
