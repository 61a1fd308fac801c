"""deploy/: the Kubernetes and KServe manifests validate offline and agree with
docker-compose.yml, the server image's entrypoint, the gateway and the builder.

Core resources validate against the Kubernetes OpenAPI schemas that the pinned
``kubernetes-validate`` package ships (no network). The custom resources (KServe,
KEDA) have no schema in any package from the registries: their pod parts
(containers, volumes, tolerations) validate as a core Pod, and their remaining
fields are checked against the fields of the KServe 0.14 / KEDA 2.16 API references.
Overlays are rendered with ``kubectl kustomize`` when kubectl is installed (``.ci/run``
installs it), and by a small strategic merge here otherwise.
"""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tce_backends import graph
from tce_backends.contract import DEFAULT_ENSEMBLE
from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = {"gpu": "triton", "cpu": "triton-cpu"}  # overlay -> the compose service it mirrors
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
LOOPBACK_ARGS = ["--http-address=127.0.0.1", "--http-port=8100", "--grpc-address=127.0.0.1", "--grpc-port=8101",
                 "--metrics-port=8002"]
# Fields of the custom resources' specs beside their pod parts (API references).
SERVING_RUNTIME_FIELDS = {"supportedModelFormats", "multiModel", "disabled", "protocolVersions", "containers",
                          "volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets", "annotations",
                          "labels", "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "replicas",
                          "storageHelper", "builtInAdapter", "workerSpec", "hostIPC"}
PREDICTOR_FIELDS = {"model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                    "timeout", "canaryTrafficPercent", "logger", "batcher", "tolerations", "nodeSelector", "affinity",
                    "serviceAccountName", "volumes", "containers", "imagePullSecrets", "annotations", "labels"}
MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "protocolVersion", "args", "env", "resources"}
SCALED_OBJECT_FIELDS = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "idleReplicaCount", "minReplicaCount",
                        "maxReplicaCount", "fallback", "advanced", "triggers"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for these files: maps merge, lists of named
    maps merge by name (the patch's items first, in its order, then the base's others), other
    lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i
                                                                   for i in base + patch):
        by_name = {i["name"]: i for i in base}
        patched = [_merge(by_name[i["name"]], i) if i["name"] in by_name else copy.deepcopy(i) for i in patch]
        named = {i["name"] for i in patch}
        return patched + [copy.deepcopy(i) for i in base if i["name"] not in named]
    return copy.deepcopy(patch)


def _labelled(resource: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """kustomize's commonLabels: on metadata, selectors and pod templates."""
    resource = copy.deepcopy(resource)
    resource["metadata"].setdefault("labels", {}).update(labels)
    spec = resource.get("spec", {})
    if resource["kind"] == "Service":
        spec["selector"].update(labels)
    if "matchLabels" in spec.get("selector", {}):
        spec["selector"]["matchLabels"].update(labels)
    if "template" in spec:
        spec["template"]["metadata"]["labels"].update(labels)
    return resource


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's resources, kustomize-style."""
    overlay_dir = K8S / "overlays" / overlay
    kustomization = documents(overlay_dir / "kustomization.yaml")[0]
    base_dir = (overlay_dir / kustomization["resources"][0]).resolve()
    base = documents(base_dir / "kustomization.yaml")[0]
    resources = [d for name in base["resources"] for d in documents(base_dir / name)]
    resources = [_labelled(r, base.get("commonLabels", {})) for r in resources]
    for name in kustomization.get("patchesStrategicMerge", []):
        for patch in documents(overlay_dir / name):
            for index, resource in enumerate(resources):
                if (resource["kind"], resource["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"]):
                    resources[index] = _merge(resource, patch)
    return resources


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == kind]
    return found


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return found


def serving_runtime() -> dict[str, Any]:
    return documents(DEPLOY / "kserve" / "servingruntime.yaml")[0]


def validate(resource: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(resource, version, strict=True)


def as_pod(pod_parts: dict[str, Any], pod_fields: set[str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
            "spec": {k: v for k, v in pod_parts.items() if k in pod_fields}}


# -- offline validation ------------------------------------------------------------

def test_every_manifest_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 11
    for path in files:
        assert documents(path), path


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_rendered_overlays_validate_against_the_kubernetes_schemas(overlay):
    resources = render(overlay)
    assert sorted(r["kind"] for r in resources) == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                                    "Service"]
    for resource in resources:
        validate(resource)


def test_a_mistake_in_a_manifest_is_caught():
    deployment = by_kind(render("gpu"), "Deployment")
    container(deployment["spec"]["template"]["spec"], "triton")["livenessProbe"]["httpGett"] = {"port": 8000}
    with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
        validate(deployment)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (.ci/run installs it)")
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kubectl_kustomize_renders_what_the_tests_check(overlay):
    result = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    key = lambda r: (r["kind"], r["metadata"]["name"])  # noqa: E731
    assert sorted(rendered, key=key) == sorted(render(overlay), key=key)
    for resource in rendered:
        validate(resource)


def test_kserve_and_keda_resources_validate_offline():
    runtime = serving_runtime()
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert set(runtime["spec"]) <= SERVING_RUNTIME_FIELDS
    validate(as_pod(runtime["spec"], {"containers", "volumes", "tolerations", "nodeSelector", "affinity"}))
    assert runtime["spec"]["containers"][0]["name"] == "kserve-container"  # the one KServe routes to

    (service,) = documents(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = service["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR_FIELDS and set(predictor["model"]) <= MODEL_FIELDS
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    assert predictor["model"]["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    validate(as_pod({"containers": [{"name": "check", "image": "x"}], **predictor}, {"containers", "tolerations"}))

    (scaler,) = documents(DEPLOY / "kserve" / "scaledobject.yaml")
    assert (scaler["apiVersion"], scaler["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert set(scaler["spec"]) <= SCALED_OBJECT_FIELDS
    # KServe names a raw deployment's Deployment <name>-predictor
    assert scaler["spec"]["scaleTargetRef"]["name"] == f"{service['metadata']['name']}-predictor"
    assert service["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"


# -- consistency with compose, the image and the builder -----------------------------

def _pod_specs() -> dict[str, tuple[dict[str, Any], str]]:
    """Every pod layout, with the compose service it mirrors."""
    pods = {f"k8s/{o}": (by_kind(render(o), "Deployment")["spec"]["template"]["spec"], s) for o, s in OVERLAYS.items()}
    pods["kserve"] = (serving_runtime()["spec"], "triton")
    return pods


def _gateway(pod: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in pod["containers"] if c["image"].startswith("tce-gateway:")]
    return found


def _env(container_spec: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the ``valueFrom`` source for a value Kubernetes fills in."""
    return {e["name"]: e["value"] if "value" in e else e["valueFrom"] for e in container_spec.get("env", [])}


def _compose_value(text: str) -> str:
    """``${NAME:-default}`` as compose resolves it with NAME unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(text))


@pytest.mark.parametrize("layout", ["k8s/gpu", "k8s/cpu", "kserve"])
def test_image_arguments_and_ports_follow_compose(layout):
    pod, service_name = _pod_specs()[layout]
    services = compose()["services"]
    triton = container(pod, "triton")
    assert triton["image"] == services[service_name]["image"]
    assert triton["args"] == services[service_name]["command"] + LOOPBACK_ARGS
    gateway = _gateway(pod)
    assert gateway["image"] == services["gateway"]["image"]
    # compose's gateway command with ${VAR:-default} resolved, and Triton in the same pod
    expected = [_compose_value(a).replace("triton:8000,triton:8001", "127.0.0.1:8100,127.0.0.1:8101")
                for a in services["gateway"]["command"]]
    assert gateway["args"] == expected
    assert {p["containerPort"] for p in gateway["ports"]} <= {8000, 8001}
    assert [p["containerPort"] for p in triton["ports"]] == [8002]  # metrics, as compose publishes
    assert _env(triton)["TCE_CANARY_URL"] == "127.0.0.1:8100"


@pytest.mark.parametrize("layout", ["k8s/gpu", "k8s/cpu", "kserve"])
def test_shm_probes_secret_and_repository_follow_compose_and_the_image(layout):
    pod, _ = _pod_specs()[layout]
    volumes = {v["name"]: v for v in pod["volumes"]}
    triton = container(pod, "triton")
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    x_triton = compose()["x-triton"]
    # /dev/shm: memory-backed, the size compose gives
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert x_triton["shm_size"] == "2gb"
    # the repository: mounted where --model-repository points, read-only, as compose mounts it
    repository = next(a.split("=", 1)[1] for a in triton["args"] if a.startswith("--model-repository="))
    assert any(v.endswith(f":{repository}:ro") for v in x_triton["volumes"])
    assert volumes[mounts[repository]]["persistentVolumeClaim"]["claimName"] == "tce-model-repository"
    # the admin key where the image's entrypoint reads it
    entrypoint = (REPO_ROOT / "docker" / "entrypoint.sh").read_text(encoding="utf-8")
    key_file = _env(triton)["TCE_ADMIN_KEY_FILE"]
    assert key_file == "/run/secrets/tce_admin_key" and key_file in entrypoint
    assert volumes[mounts["/run/secrets"]]["secret"]["items"] == [{"key": "admin-key", "path": "tce_admin_key"}]
    # probes: the v2 health endpoints, through the gateway's HTTP port, whose door serves them
    from tce_gateway.http_app import DISCOVERY

    gateway_http = int(next(a.split("=", 1)[1] for a in _gateway(pod)["args"] if a.startswith("--http-port=")))
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert triton[probe]["httpGet"] == {"path": path, "port": gateway_http}
        assert DISCOVERY.match(path)
    # the gateway reads only the repository's releases.json (canary and shadow traffic): the
    # same claim, read-only, where its --repository points
    gateway_mounts = _gateway(pod)["volumeMounts"]
    gateway_repository = next(a.split("=", 1)[1] for a in _gateway(pod)["args"] if a.startswith("--repository="))
    assert gateway_mounts == [{"name": mounts[repository], "mountPath": gateway_repository, "readOnly": True}]
    assert any(v.endswith(f":{gateway_repository}:ro") for v in compose()["services"]["gateway"]["volumes"])


def test_autoscaling_queries_name_what_the_builder_serves():
    """The queue-time metric divides by the ensemble's requests and sums its steps' queues."""
    assert DEFAULT_ENSEMBLE == "calibrated_ensemble"
    assert {step.name for step in graph.STEPS} and DEFAULT_ENSEMBLE not in {step.name for step in graph.STEPS}
    (scaler,) = documents(DEPLOY / "kserve" / "scaledobject.yaml")
    adapter = documents(K8S / "prometheus-adapter-rules.yaml")[0]["rules"]["custom"][0]
    for query in (scaler["spec"]["triggers"][0]["metadata"]["query"], adapter["metricsQuery"]):
        assert f'nv_inference_queue_duration_us{{model!="{DEFAULT_ENSEMBLE}"' in query
        assert f'nv_inference_request_success{{model="{DEFAULT_ENSEMBLE}"' in query
    hpa = by_kind(render("gpu"), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == adapter["name"]["as"]
    deployment = by_kind(render("gpu"), "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8002" and "--metrics-port=8002" in LOOPBACK_ARGS


def test_the_sharded_batch_job_validates_and_runs_one_shard_per_index():
    (job,) = documents(DEPLOY / "k8s" / "batch" / "predict-job.yaml")
    validate(job)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    (predict,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in predict["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert predict["args"][0] == "predict" and f"--shard=$(JOB_COMPLETION_INDEX)/{spec['completions']}" in \
        [a.split("#")[0].strip() for a in predict["args"]]
    # the arguments are tce predict's own (with the index the controller gives pod 3)
    from tce.cli import parser

    args = parser().parse_args([a.replace("$(JOB_COMPLETION_INDEX)", "3") for a in predict["args"]])
    assert (args.command, args.shard, args.url) == ("predict", f"3/{spec['completions']}", "tce-triton:8001")
    assert predict["image"].startswith("tce-batch:")


@pytest.mark.parametrize("layout", ["k8s/gpu", "k8s/cpu", "kserve"])
def test_the_pods_pass_their_shape_to_the_sizing_check(layout):
    """The entrypoint checks the repository's instance counts against the pod: its CPU request
    (a pod without a CPU limit sees the whole node) and its GPU limit, under the names the
    rule's file reads; docs/scaling.md builds the claim's repository for the GPU pod's shape."""
    from tce.repository.host_sizing import CPUS_ENV, GPUS_ENV

    pod, _ = _pod_specs()[layout]
    triton = container(pod, "triton")
    env = _env(triton)
    assert env[CPUS_ENV] == {"resourceFieldRef": {"containerName": "triton", "resource": "requests.cpu"}}
    gpus = int(triton["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
    assert env[GPUS_ENV] == str(gpus)
    if layout == "k8s/gpu":
        cpus = int(triton["resources"]["requests"]["cpu"])
        scaling = (REPO_ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
        assert f"--host-cpus {cpus} --host-gpus {gpus}" in scaling


def test_compose_passes_the_reserved_gpus_to_the_sizing_check():
    from tce.repository.host_sizing import GPUS_ENV

    triton = compose()["services"]["triton"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert triton["environment"][GPUS_ENV] == str(device["count"])
