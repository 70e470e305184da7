"""deploy/k8s (kustomize): every overlay builds, and what it builds is a sound Oasis deployment.

No cluster is needed. `kustomize_build` below is a deliberately small kustomize: `resources`
(files and directories), `patches` (strategic merge by kind and name, from files), `namespace`,
`replicas`, `images` and a `secretGenerator` reading env files; anything else in a kustomization
or a patch (other fields, `$patch` directives, adding list elements, lists it has no merge rule
for) is refused, so the overlays stay within what it understands. When `kubectl` (kustomize v4
or later) is on the PATH, a test checks that the real kustomize builds exactly the same objects;
without it that test skips (Debian bookworm's kubernetes-client embeds kustomize v2.0.3, too old
for `patches` and `replicas`).

The Secrets' values never enter git: each overlay's secretGenerator reads `*-secrets.env`
(ignored by deploy/k8s/.gitignore); the builder reads the committed `*-secrets.env.example`
beside it instead, which holds the same keys with empty values.

Then, per overlay: probes, resources, non-root security contexts (the Dockerfile's uid), the
overlay's image, environment variables (oasis_site.environment.KNOWN_VARIABLES for our image),
references to Secrets, ConfigMaps and claims, selectors, Services, the Celery queues and the
ingest shards, autoscaling on a documented metric, disruption budgets, the single-instance
processes, the migration Job and the backups. Every check is a function returning problems, and
each is run on a broken copy too: bad manifests must fail, not pass silently.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from django.conf import settings

from marketdata.core.timeframes import Timeframe
from marketdata.exchanges import PROFILES
from oasis_site.environment import KNOWN_VARIABLES, read_environment
from oasis_site.management.commands.devstack import DEFAULT_SYMBOLS
from oasis_site.management.commands.devstack import Command as DevstackCommand
from oasis_site.metrics_collectors import celery_queue_names

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("dev", "stg", "prod")
NAMESPACES = {"dev": "oasis-dev", "stg": "oasis-stg", "prod": "oasis-prod"}
EXPECTED_OASIS_ENV = {"dev": "dev", "stg": "prod", "prod": "prod"}
MIN_WEB_REPLICAS = {"prod": 2}
# The name every app container has in the base; each overlay's `images` entry replaces it.
APP_IMAGE_NAME = "oasis"

Resource = dict[str, Any]

# Pods whose probes may run a command instead of asking HTTP or TCP, and why.
EXEC_PROBE_EXEMPTIONS = {
    "worker": "a Celery worker serves no HTTP: readiness asks it over the broker (celery inspect ping)",
    "beat": "beat serves nothing: its probes check that the pid in its pidfile is alive",
    "timescaledb": "PostgreSQL speaks no HTTP: readiness is pg_isready",
    "redis": "Redis speaks no HTTP: readiness is redis-cli ping",
    "mongo": "MongoDB speaks no HTTP: readiness is a mongosh ping",
}
# What the third-party images read from the environment (their own variables, not the app's).
THIRD_PARTY_ENV = {
    "timescale/timescaledb": {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "PGDATA"},
    "mongo": {"MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD", "MONGO_URL"},
    "redis": set(),
}
# App processes that must not start before the migration Job has run (expand/contract).
MIGRATION_WAITERS = ("web", "ingest", "trade", "worker")
# Seconds each process needs between SIGTERM and SIGKILL, at least.
MIN_GRACE_SECONDS = {"ingest": 60, "trade": 30, "worker": 60}


class KustomizeError(ValueError):
    """The kustomization uses something this builder does not implement (or is wrong)."""


# --- the builder --------------------------------------------------------------------------

KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "patches",
    "replicas",
    "images",
    "secretGenerator",
    "generatorOptions",
}
CLUSTER_SCOPED_KINDS = {"Namespace"}
SCALABLE_KINDS = {"Deployment", "StatefulSet"}
# Strategic merge: lists merged element by element on this key (the Kubernetes API's
# patchMergeKey); the patch may only change elements that exist (kustomize would prepend new ones).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
# Lists a patch replaces whole.
ATOMIC_LISTS = {"command", "args", "envFrom", "volumeClaimTemplates", "accessModes"}


def example_of(path: Path) -> Path:
    """The committed stand-in for a gitignored env file: the same keys, no values."""
    return path.with_name(path.name + ".example")


def load_documents(path: Path) -> list[Resource]:
    try:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise KustomizeError(f"{path}: {exc}") from None
    for document in documents:
        if not isinstance(document, dict) or not {"apiVersion", "kind", "metadata"} <= set(document):
            raise KustomizeError(f"{path}: every document needs apiVersion, kind and metadata")
        if not document["metadata"].get("name"):
            raise KustomizeError(f"{path}: a {document['kind']} has no metadata.name")
    return documents


def parse_env_file(path: Path) -> dict[str, str]:
    """An env file as kustomize's generators read it: KEY=VALUE lines, # comments, blank lines."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, equals, value = line.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise KustomizeError(f"{path} line {number}: expected KEY=VALUE")
        if name in values:
            raise KustomizeError(f"{path} line {number}: {name} twice")
        values[name] = value
    return values


def _inside(directory: Path, entry: str) -> Path:
    if "://" in entry or entry.startswith("/"):
        raise KustomizeError(f"{directory}: only relative paths are supported, got {entry!r}")
    return (directory / entry).resolve()


def _find(resources: list[Resource], kind: str, name: str, where: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    if len(found) != 1:
        raise KustomizeError(f"{where}: {len(found)} {kind} named {name!r} to patch, expected one")
    return found[0]


def strategic_merge(original: Any, patch: Any, where: str) -> Any:
    """Apply a strategic-merge patch, within the rules this builder knows (see MERGE_KEYS)."""
    if not isinstance(patch, dict) or not isinstance(original, dict):
        raise KustomizeError(f"{where}: a patch merges mappings into mappings")
    merged = dict(original)
    for key, value in patch.items():
        here = f"{where}.{key}"
        if key.startswith("$"):
            raise KustomizeError(f"{here}: patch directives are not supported")
        if value is None:
            raise KustomizeError(f"{here}: deleting by null is not supported")
        if isinstance(value, dict):
            merged[key] = strategic_merge(merged.get(key, {}), value, here)
        elif isinstance(value, list):
            if key in MERGE_KEYS:
                merged[key] = _merge_list(merged.get(key, []), value, MERGE_KEYS[key], here)
            elif key in ATOMIC_LISTS:
                merged[key] = copy.deepcopy(value)
            else:
                raise KustomizeError(f"{here}: no merge rule for this list")
        else:
            merged[key] = value
    return merged


def _merge_list(original: list[Any], patch: list[Any], key: str, where: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in original]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise KustomizeError(f"{where}: every element needs its merge key {key!r}")
        matches = [i for i, existing in enumerate(merged) if existing.get(key) == item[key]]
        if len(matches) != 1:
            raise KustomizeError(
                f"{where}: no element with {key}={item[key]!r} to patch (adding one is unsupported)"
            )
        merged[matches[0]] = strategic_merge(merged[matches[0]], item, f"{where}[{item[key]}]")
    return merged


def _generate_secret(directory: Path, spec: Any, read: Callable[[Path], Path]) -> Resource:
    if not isinstance(spec, dict) or set(spec) != {"name", "envs"}:
        raise KustomizeError(f"{directory}: a secretGenerator entry has exactly name and envs")
    data: dict[str, str] = {}
    for entry in spec["envs"]:
        source = read(_inside(directory, entry))
        if not source.is_file():
            raise KustomizeError(
                f"{directory}: secretGenerator {spec['name']} reads {source}, which is missing"
            )
        for name, value in parse_env_file(source).items():
            data[name] = base64.b64encode(value.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": spec["name"]},
        "type": "Opaque",
        "data": data,
    }


def kustomize_build(directory: Path, *, read: Callable[[Path], Path] = example_of) -> list[Resource]:
    """Build the kustomization in `directory`. `read` maps a secretGenerator's env file to the
    file actually read (by default its .example: the real one is not in the repository)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    where = f"{directory.relative_to(ROOT) if directory.is_relative_to(ROOT) else directory}"
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{where}: unsupported kustomization fields {sorted(unknown)}")
    if kustomization.get("kind") != "Kustomization":
        raise KustomizeError(f"{where}: kind must be Kustomization")

    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = _inside(directory, entry)
        resources += kustomize_build(path, read=read) if path.is_dir() else load_documents(path)

    generated = kustomization.get("secretGenerator", [])
    if generated and kustomization.get("generatorOptions") != {"disableNameSuffixHash": True}:
        # Hashed names would need every reference rewritten: not implemented here.
        raise KustomizeError(f"{where}: generatorOptions must be exactly disableNameSuffixHash: true")
    resources += [_generate_secret(directory, spec, read) for spec in generated]

    for patch_entry in kustomization.get("patches", []):
        if not isinstance(patch_entry, dict) or set(patch_entry) != {"path"}:
            raise KustomizeError(f"{where}: patches entries are {{path: file}} (no target, no inline patch)")
        patch_file = _inside(directory, patch_entry["path"])
        for patch in load_documents(patch_file):
            target = _find(resources, patch["kind"], patch["metadata"]["name"], str(patch_file))
            if target["apiVersion"] != patch["apiVersion"]:
                raise KustomizeError(
                    f"{patch_file}: apiVersion {patch['apiVersion']} != {target['apiVersion']}"
                )
            merged = strategic_merge(
                target, patch, f"{patch_file.name}:{patch['kind']}/{target['metadata']['name']}"
            )
            resources[resources.index(target)] = merged

    namespace = kustomization.get("namespace")
    if namespace is not None:
        for resource in resources:
            if resource["kind"] == "Namespace":
                resource["metadata"]["name"] = namespace  # what kustomize v5 does too
            elif resource["kind"] not in CLUSTER_SCOPED_KINDS:
                resource["metadata"]["namespace"] = namespace

    for replica in kustomization.get("replicas", []):
        if set(replica) != {"name", "count"} or not isinstance(replica["count"], int):
            raise KustomizeError(f"{where}: replicas entries are {{name, count}}")
        targets = [
            r for r in resources if r["kind"] in SCALABLE_KINDS and r["metadata"]["name"] == replica["name"]
        ]
        if not targets:
            raise KustomizeError(
                f"{where}: replicas names {replica['name']}, which is no Deployment or StatefulSet"
            )
        for target in targets:
            target["spec"]["replicas"] = replica["count"]

    for image in kustomization.get("images", []):
        if not set(image) <= {"name", "newName", "newTag"} or "name" not in image:
            raise KustomizeError(f"{where}: images entries are {{name, newName, newTag}}")
        replaced = 0
        for _, container in containers_of(resources):
            repository, _, tag = container["image"].partition(":")
            if repository == image["name"]:
                new_tag = image.get("newTag", tag)
                container["image"] = image.get("newName", repository) + (f":{new_tag}" if new_tag else "")
                replaced += 1
        if not replaced:
            raise KustomizeError(f"{where}: no container uses image {image['name']}")

    keys = [(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for r in resources]
    duplicates = sorted({key for key in keys if keys.count(key) > 1}, key=str)
    if duplicates:
        raise KustomizeError(f"{where}: defined more than once: {duplicates}")
    return resources


# --- reading what was built ----------------------------------------------------------------

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob")


def name_of(resource: Resource) -> str:
    return f"{resource['kind']}/{resource['metadata']['name']}"


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def named(resources: list[Resource], kind: str, name: str) -> Resource | None:
    return next((r for r in of_kind(resources, kind) if r["metadata"]["name"] == name), None)


def pod_template(resource: Resource) -> dict[str, Any]:
    if resource["kind"] == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return resource["spec"]["template"]  # type: ignore[no-any-return]


def workloads(resources: list[Resource]) -> Iterator[Resource]:
    return (r for r in resources if r["kind"] in WORKLOAD_KINDS)


def containers_of(
    resources: list[Resource], *, init: bool = True
) -> Iterator[tuple[Resource, dict[str, Any]]]:
    for workload in workloads(resources):
        spec = pod_template(workload)["spec"]
        for container in [*(spec.get("initContainers", []) if init else []), *spec["containers"]]:
            yield workload, container


def component(resource: Resource) -> str:
    return str(pod_template(resource)["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def by_component(resources: list[Resource], name: str, kind: str = "Deployment") -> list[Resource]:
    return [r for r in of_kind(resources, kind) if component(r) == name]


def command_of(container: dict[str, Any]) -> list[str]:
    return [str(part) for part in [*container.get("command", []), *container.get("args", [])]]


def option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command[:-1] else None


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def config_data(resources: list[Resource]) -> dict[str, str]:
    config = named(resources, "ConfigMap", "oasis-config")
    return dict(config["data"]) if config else {}


def app_image(overlay: str) -> str:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    (entry,) = [image for image in kustomization["images"] if image["name"] == APP_IMAGE_NAME]
    return f"{entry['newName']}:{entry['newTag']}"


def is_app(container: dict[str, Any], image: str) -> bool:
    return bool(container["image"] == image or container["image"].partition(":")[0] == APP_IMAGE_NAME)


def dockerfile_uid() -> int:
    match = re.search(r"useradd[^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile creates no user with --uid"
    return int(match.group(1))


def documented_metrics() -> set[str]:
    """The metric names docs/metrics.md's tables list (first column, in backquotes)."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `(oasis_[a-z0-9_]+)` \|", text, flags=re.MULTILINE))


# --- the checks: each returns what is wrong -----------------------------------------------


def check_probes(resources: list[Resource]) -> list[str]:
    problems = []
    for workload in resources:
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in pod_template(workload)["spec"]["containers"]:
            where = f"{name_of(workload)} container {container['name']}"
            for probe_name in ("livenessProbe", "readinessProbe"):
                probe = container.get(probe_name)
                if not probe:
                    problems.append(f"{where} has no {probe_name}")
                elif "exec" in probe and component(workload) not in EXEC_PROBE_EXEMPTIONS:
                    problems.append(f"{where}: an exec {probe_name} without a documented exemption")
    return problems


def check_resources(resources: list[Resource]) -> list[str]:
    problems = []
    for workload, container in containers_of(resources):
        limits = container.get("resources", {})
        for part in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(limits.get(part, {}))
            if missing:
                problems.append(
                    f"{name_of(workload)} container {container['name']}: no {part} for {sorted(missing)}"
                )
    return problems


def check_security(resources: list[Resource], image: str) -> list[str]:
    problems = []
    uid = dockerfile_uid()
    for workload in workloads(resources):
        spec = pod_template(workload)["spec"]
        context = spec.get("securityContext", {})
        if context.get("runAsNonRoot") is not True:
            problems.append(f"{name_of(workload)}: pod securityContext.runAsNonRoot is not true")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name_of(workload)}: mounts a service account token it does not use")
        ours = [c for c in [*spec.get("initContainers", []), *spec["containers"]] if is_app(c, image)]
        if ours and (context.get("runAsUser"), context.get("runAsGroup")) != (uid, uid):
            problems.append(
                f"{name_of(workload)}: runs our image as {context.get('runAsUser')}, not uid {uid}"
            )
    for workload, container in containers_of(resources):
        context = container.get("securityContext", {})
        where = f"{name_of(workload)} container {container['name']}"
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: does not drop ALL capabilities")
        if context.get("runAsUser") == 0 or context.get("privileged"):
            problems.append(f"{where}: runs as root or privileged")
    return problems


def check_images(resources: list[Resource], image: str) -> list[str]:
    problems = []
    for workload, container in containers_of(resources):
        where = f"{name_of(workload)} container {container['name']}"
        if container["image"].partition(":")[0] == APP_IMAGE_NAME and container["image"] != image:
            problems.append(f"{where}: image {container['image']}, not the overlay's {image}")
        elif container["image"] != image:
            tag = container["image"].rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest" or not re.search(r"\d", tag):
                problems.append(f"{where}: unpinned image {container['image']}")
    if not any(container["image"] == image for _, container in containers_of(resources)):
        problems.append(f"no container runs the overlay's image {image}")
    return problems


def _env_names(container: dict[str, Any], resources: list[Resource]) -> list[str]:
    names = [entry["name"] for entry in container.get("env", [])]
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            found = named(resources, "ConfigMap", source["configMapRef"]["name"])
            names += list((found or {}).get("data", {}))
        if "secretRef" in source:
            found = named(resources, "Secret", source["secretRef"]["name"])
            names += list((found or {}).get("data", {}))
    return names


def check_environment_names(resources: list[Resource], image: str) -> list[str]:
    problems = []
    for workload, container in containers_of(resources):
        where = f"{name_of(workload)} container {container['name']}"
        names = _env_names(container, resources)
        if is_app(container, image):
            unknown = sorted(set(names) - set(KNOWN_VARIABLES))
            if unknown:
                problems.append(f"{where}: variables not in KNOWN_VARIABLES: {unknown}")
            continue
        repository = container["image"].partition(":")[0]
        allowed = THIRD_PARTY_ENV.get(repository)
        if allowed is None:
            problems.append(f"{where}: image {repository} has no list of the variables it reads")
        elif set(names) - allowed:
            problems.append(f"{where}: variables {repository} does not read: {sorted(set(names) - allowed)}")
    return problems


def check_references(resources: list[Resource]) -> list[str]:
    """Secrets, ConfigMaps, their keys, and volume claims named by pods exist in the build."""
    problems = []
    for workload in workloads(resources):
        spec = pod_template(workload)["spec"]
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if named(resources, "PersistentVolumeClaim", claim) is None:
                    problems.append(f"{name_of(workload)}: claim {claim} is not in the build")
            for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if field in volume:
                    ref = volume[field].get("name") or volume[field].get("secretName")
                    if named(resources, kind, ref) is None:
                        problems.append(f"{name_of(workload)}: volume {kind} {ref} is not in the build")
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{name_of(workload)} container {container['name']}"
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in claims:
                    problems.append(f"{where}: mounts {mount['name']}, which is no volume of the pod")
            for source in container.get("envFrom", []):
                for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if field in source and named(resources, kind, source[field]["name"]) is None:
                        problems.append(
                            f"{where}: envFrom {kind} {source[field]['name']} is not in the build"
                        )
            for entry in container.get("env", []):
                for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = entry.get("valueFrom", {}).get(field)
                    if ref is None:
                        continue
                    found = named(resources, kind, ref["name"])
                    if found is None:
                        problems.append(
                            f"{where}: {entry['name']} reads {kind} {ref['name']}, not in the build"
                        )
                    elif ref["key"] not in found.get("data", {}):
                        problems.append(
                            f"{where}: {entry['name']} reads key {ref['key']} absent from {ref['name']}"
                        )
    return problems


def check_selectors(resources: list[Resource]) -> list[str]:
    problems = []
    controllers = [r for r in resources if r["kind"] in ("Deployment", "StatefulSet")]
    for controller in controllers:
        selector = controller["spec"]["selector"]["matchLabels"]
        if set(controller["spec"]["selector"]) != {"matchLabels"} or not selector:
            problems.append(f"{name_of(controller)}: selector must be non-empty matchLabels")
        if not matches(selector, pod_template(controller)["metadata"]["labels"]):
            problems.append(f"{name_of(controller)}: selector {selector} does not match its pod labels")
        for other in controllers:
            if other is not controller and matches(selector, pod_template(other)["metadata"]["labels"]):
                problems.append(f"{name_of(controller)}: selector also matches {name_of(other)}'s pods")
    return problems


def _pods_selected(resources: list[Resource], selector: dict[str, str]) -> list[Resource]:
    return [
        r
        for r in resources
        if r["kind"] in ("Deployment", "StatefulSet")
        and matches(selector, pod_template(r)["metadata"]["labels"])
    ]


def check_services(resources: list[Resource]) -> list[str]:
    problems = []
    for service in of_kind(resources, "Service"):
        selected = _pods_selected(resources, service["spec"].get("selector", {}))
        if not service["spec"].get("selector") or not selected:
            problems.append(f"{name_of(service)}: selects no pods")
            continue
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload in selected:
                declared = [
                    p for c in pod_template(workload)["spec"]["containers"] for p in c.get("ports", [])
                ]
                if not any(target in (p.get("name"), p["containerPort"]) for p in declared):
                    problems.append(f"{name_of(service)}: port {target} is not a port of {name_of(workload)}")
    for stateful in of_kind(resources, "StatefulSet"):
        governing = named(resources, "Service", stateful["spec"].get("serviceName", ""))
        if governing is None or governing["spec"].get("clusterIP") != "None":
            problems.append(f"{name_of(stateful)}: serviceName is not a headless Service of the build")
        if not stateful["spec"].get("volumeClaimTemplates"):
            problems.append(f"{name_of(stateful)}: keeps its data on no volumeClaimTemplates")
    # Every host a ConfigMap URL names inside the cluster is a Service, on one of its ports.
    for key, value in config_data(resources).items():
        for url in value.split(","):  # a list for OASIS_INGEST_METRICS_URL: one per shard
            parts = urlsplit(url) if "://" in url else None
            if parts is None or not parts.hostname or "." in parts.hostname:
                continue
            host_service = named(resources, "Service", parts.hostname)
            if host_service is None:
                problems.append(f"oasis-config {key} names host {parts.hostname}, which is no Service")
            elif parts.port and parts.port not in [p["port"] for p in host_service["spec"]["ports"]]:
                problems.append(f"oasis-config {key}: {parts.hostname} has no port {parts.port}")
    return problems


def worker_queues(worker: Resource) -> list[str]:
    (container,) = pod_template(worker)["spec"]["containers"]
    queues = option(command_of(container), "-Q")
    return queues.split(",") if queues else []


def check_queues(resources: list[Resource]) -> list[str]:
    """Every queue the routing sends to is consumed by exactly one worker Deployment, which
    declares the /metrics port of each of its pool processes."""
    problems = []
    expected = celery_queue_names()
    workers = by_component(resources, "worker")
    consumed: dict[str, list[str]] = {}
    base_port = int(config_data(resources).get("OASIS_WORKER_METRICS_PORT", "9103"))
    for worker in workers:
        queues = worker_queues(worker)
        if not queues:
            problems.append(f"{name_of(worker)}: names no queue (-Q)")
        for queue in queues:
            consumed.setdefault(queue, []).append(worker["metadata"]["name"])
        (container,) = pod_template(worker)["spec"]["containers"]
        concurrency = int(option(command_of(container), "--concurrency") or 0)
        ports = {p["containerPort"] for p in container.get("ports", [])}
        wanted = {base_port + i for i in range(concurrency)}
        if not concurrency or ports != wanted:
            problems.append(f"{name_of(worker)}: --concurrency {concurrency} needs ports {sorted(wanted)}")
    for queue in expected:
        if len(consumed.get(queue, [])) != 1:
            problems.append(
                f"queue {queue} is consumed by {consumed.get(queue, [])}, expected one Deployment"
            )
    for queue in sorted(set(consumed) - set(expected)):
        problems.append(f"queue {queue} is consumed but nothing is routed to it")
    return problems


def desk_streams() -> tuple[list[str], list[str]]:
    """The desk's symbols and streamed timeframes: make run's (devstack) defaults."""
    options = DevstackCommand().create_parser("manage.py", "devstack").parse_args([])
    return DEFAULT_SYMBOLS.split(","), str(options.timeframes).split(",")


def check_ingest_shards(resources: list[Resource]) -> list[str]:
    """The ingest Deployments oasis-ingest-0…n-1 share the desk's symbols, each exactly once."""
    problems = []
    symbols, timeframes = desk_streams()
    shards = by_component(resources, "ingest")
    names = sorted(shard["metadata"]["name"] for shard in shards)
    if names != [f"oasis-ingest-{i}" for i in range(len(shards))] or not shards:
        problems.append(f"ingest shards must be oasis-ingest-0…{len(shards) - 1}; found {names}")
    seen: dict[str, str] = {}
    for shard in shards:
        spec = pod_template(shard)["spec"]
        (container,) = spec["containers"]
        command = command_of(container)
        if command[:3] != ["python", "manage.py", "ingest"]:
            problems.append(f"{name_of(shard)} runs {command[:3]}, not manage.py ingest")
        shard_symbols = (option(command, "--symbols") or "").split(",")
        if "all" in shard_symbols:
            problems.append(f"{name_of(shard)}: --symbols all would ingest every shard's symbols")
        for symbol in shard_symbols:
            if symbol in seen:
                problems.append(f"{symbol} is ingested by {seen[symbol]} and {shard['metadata']['name']}")
            seen[symbol] = shard["metadata"]["name"]
        if option(command, "--instance") != shard["metadata"]["name"].removeprefix("oasis-"):
            problems.append(f"{name_of(shard)}: --instance must name the shard (its alert keys)")
        shard_timeframes = (option(command, "--timeframes") or "").split(",")
        if shard_timeframes != timeframes:
            problems.append(
                f"{name_of(shard)}: --timeframes {shard_timeframes}, expected all of {timeframes}"
            )
        syncs = [c for c in spec.get("initContainers", []) if "sync_symbols" in command_of(c)]
        if len(syncs) != 1 or option(command_of(syncs[0]), "--symbols") != option(command, "--symbols"):
            problems.append(f"{name_of(shard)}: its sync_symbols init container must load its own --symbols")
    if sorted(seen) != sorted(symbols):
        problems.append(f"the shards ingest {sorted(seen)}; the desk's symbols are {sorted(symbols)}")
    # The operations page reads every shard's /metrics: the config lists each shard once.
    listed = [urlsplit(url).hostname for url in config_data(resources)["OASIS_INGEST_METRICS_URL"].split(",")]
    if sorted(listed, key=str) != names:
        problems.append(f"OASIS_INGEST_METRICS_URL names {listed}; the shards are {names}")
    for name in timeframes:
        for profile in PROFILES.values():
            if Timeframe.parse(name) not in profile.streamed_timeframes:
                problems.append(f"{profile.name} does not stream {name}")
    for simulator in of_kind(resources, "Deployment"):
        for container in pod_template(simulator)["spec"]["containers"]:
            command = command_of(container)
            if "simexchange" in command and not set(seen) <= set(
                (option(command, "--symbols") or "").split(",")
            ):
                problems.append(f"{name_of(simulator)} does not simulate every ingested symbol")
    return problems


def check_autoscaling(resources: list[Resource]) -> list[str]:
    problems = []
    documented = documented_metrics()
    scaled = set()
    for hpa in of_kind(resources, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = named(resources, ref["kind"], ref["name"])
        if ref["kind"] != "Deployment" or target is None:
            problems.append(
                f"{name_of(hpa)}: targets {ref['kind']}/{ref['name']}, not a Deployment of the build"
            )
            continue
        scaled.add(ref["name"])
        if "replicas" in target["spec"]:
            problems.append(f"{name_of(target)} sets replicas, which its autoscaler owns")
        if not 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]:
            problems.append(f"{name_of(hpa)}: needs 1 <= minReplicas <= maxReplicas")
        if not hpa["spec"].get("metrics"):
            problems.append(f"{name_of(hpa)}: scales on no metric")
        for metric in hpa["spec"].get("metrics", []):
            source = metric.get(metric["type"].lower(), {}).get("metric", {})
            if source.get("name") not in documented:
                problems.append(f"{name_of(hpa)}: metric {source.get('name')} is not in docs/metrics.md")
            queue = source.get("selector", {}).get("matchLabels", {}).get("queue")
            if source.get("name") == "oasis_celery_queue_length" and queue not in worker_queues(target):
                problems.append(
                    f"{name_of(hpa)}: scales on queue {queue}, which {name_of(target)} does not consume"
                )
    for worker in by_component(resources, "worker"):
        if worker["metadata"]["name"] not in scaled:
            problems.append(f"{name_of(worker)} has no autoscaler")
    for singleton in ("trade", "beat", "ingest"):
        for deployment in by_component(resources, singleton):
            if deployment["metadata"]["name"] in scaled:
                problems.append(f"{name_of(deployment)} must not be autoscaled: one process at a time")
    return problems


def check_disruption_budgets(resources: list[Resource]) -> list[str]:
    problems = []
    budgeted = set()
    for pdb in of_kind(resources, "PodDisruptionBudget"):
        selected = _pods_selected(resources, pdb["spec"]["selector"]["matchLabels"])
        if len(selected) != 1:
            problems.append(f"{name_of(pdb)}: selects {len(selected)} workloads, expected one")
            continue
        budgeted.add(selected[0]["metadata"]["name"])
        if pdb["spec"].get("maxUnavailable", 0) < 1 and "minAvailable" not in pdb["spec"]:
            problems.append(f"{name_of(pdb)}: maxUnavailable 0 blocks every node drain")
        if pdb["spec"].get("minAvailable", 0) >= selected[0]["spec"].get("replicas", 1) > 1:
            problems.append(f"{name_of(pdb)}: minAvailable leaves nothing to evict")
    for name in ("web", "worker"):
        for deployment in by_component(resources, name):
            if deployment["metadata"]["name"] not in budgeted:
                problems.append(f"{name_of(deployment)} has no PodDisruptionBudget")
    return problems


def check_single_instances(resources: list[Resource]) -> list[str]:
    """The trader and beat run exactly once, each ingest shard once: one replica, Recreate."""
    problems = []
    for name in ("trade", "beat"):
        if len(by_component(resources, name)) != 1:
            problems.append(
                f"expected exactly one {name} Deployment, found {len(by_component(resources, name))}"
            )
    for name in ("trade", "beat", "ingest"):
        for deployment in by_component(resources, name):
            if deployment["spec"].get("replicas") != 1:
                problems.append(
                    f"{name_of(deployment)}: replicas {deployment['spec'].get('replicas')}, must be 1"
                )
            if deployment["spec"].get("strategy", {}).get("type") != "Recreate":
                problems.append(f"{name_of(deployment)}: strategy must be Recreate (never two at once)")
    for deployment in of_kind(resources, "Deployment"):
        grace = pod_template(deployment)["spec"].get("terminationGracePeriodSeconds", 30)
        if grace < MIN_GRACE_SECONDS.get(component(deployment), 0):
            problems.append(
                f"{name_of(deployment)}: terminationGracePeriodSeconds {grace} is too short to drain"
            )
    return problems


def check_web(resources: list[Resource]) -> list[str]:
    problems = []
    webs = by_component(resources, "web")
    if len(webs) != 1:
        return [f"expected one web Deployment, found {len(webs)}"]
    (web,) = webs
    strategy = web["spec"].get("strategy", {})
    if (
        strategy.get("type") != "RollingUpdate"
        or strategy.get("rollingUpdate", {}).get("maxUnavailable") != 0
    ):
        problems.append("web must roll with maxUnavailable 0")
    spec = pod_template(web)["spec"]
    (container,) = spec["containers"]
    if command_of(container)[-2:] != ["manage.py", "serve"]:
        problems.append(f"web runs {command_of(container)}, not manage.py serve")
    hosts = config_data(resources).get("ALLOWED_HOSTS", "").split(",")
    for probe_name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = container.get(probe_name, {}).get("httpGet", {})
        if probe.get("path") != path:
            problems.append(f"web {probe_name} must GET {path}")
        host = {h["name"]: h["value"] for h in probe.get("httpHeaders", [])}.get("Host")
        if host not in hosts:
            problems.append(f"web {probe_name} sends Host {host}, not in ALLOWED_HOSTS {hosts}")
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if pre_stop[:1] != ["sleep"]:
        problems.append("web needs a preStop sleep so it leaves the endpoints before SIGTERM")
    else:
        # The sleep, daphne's --application-close-timeout (10 s), and a margin.
        if spec.get("terminationGracePeriodSeconds", 30) < int(pre_stop[1]) + 15:
            problems.append("web's terminationGracePeriodSeconds does not cover preStop + closing WebSockets")
    return problems


def check_migrations(resources: list[Resource]) -> list[str]:
    problems = []
    jobs = [
        job
        for job in of_kind(resources, "Job")
        if any(
            command_of(c)[1:3] == ["manage.py", "migrate"] for c in pod_template(job)["spec"]["containers"]
        )
    ]
    if len(jobs) != 1:
        problems.append(f"expected one Job running manage.py migrate, found {len(jobs)}")
    for deployment in of_kind(resources, "Deployment"):
        if component(deployment) not in MIGRATION_WAITERS:
            continue
        inits = pod_template(deployment)["spec"].get("initContainers", [])
        if not any("migrate --check" in " ".join(command_of(c)) for c in inits):
            problems.append(f"{name_of(deployment)}: no init container waits for the migrations")
    return problems


def check_backups(resources: list[Resource]) -> list[str]:
    problems = []
    commands = {}
    for cronjob in of_kind(resources, "CronJob"):
        if cronjob["spec"].get("concurrencyPolicy") != "Forbid":
            problems.append(f"{name_of(cronjob)}: concurrencyPolicy must be Forbid")
        spec = pod_template(cronjob)["spec"]
        (container,) = spec["containers"]
        text = " ".join(command_of(container))
        commands[cronjob["metadata"]["name"]] = text
        claims = {v["name"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
        outputs = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in claims]
        if not outputs or not any(f'"{path}/' in text for path in outputs):
            problems.append(f"{name_of(cronjob)}: writes its dump to no persistent volume")
    if not any("manage.py backup" in text and "--mongo" not in text for text in commands.values()):
        problems.append("no CronJob runs manage.py backup (PostgreSQL)")
    if not any("manage.py backup --mongo" in text for text in commands.values()):
        problems.append("no CronJob dumps MongoDB")
    return problems


def check_namespace(resources: list[Resource], namespace: str) -> list[str]:
    problems = []
    namespaces = of_kind(resources, "Namespace")
    if [n["metadata"]["name"] for n in namespaces] != [namespace]:
        problems.append(f"the build must create exactly the namespace {namespace}")
    for resource in resources:
        if (
            resource["kind"] not in CLUSTER_SCOPED_KINDS
            and resource["metadata"].get("namespace") != namespace
        ):
            problems.append(f"{name_of(resource)} is in namespace {resource['metadata'].get('namespace')}")
    return problems


def check_replicas(resources: list[Resource], overlay: str) -> list[str]:
    """Production keeps serving while a web pod rolls or its node drains."""
    web = named(resources, "Deployment", "oasis-web")
    replicas = web["spec"].get("replicas", 1) if web else 0
    minimum = MIN_WEB_REPLICAS.get(overlay, 1)
    return [] if replicas >= minimum else [f"{overlay} runs {replicas} web pods, fewer than {minimum}"]


def check_all(resources: list[Resource], overlay: str) -> list[str]:
    image = app_image(overlay)
    return [
        *check_probes(resources),
        *check_resources(resources),
        *check_security(resources, image),
        *check_images(resources, image),
        *check_environment_names(resources, image),
        *check_references(resources),
        *check_selectors(resources),
        *check_services(resources),
        *check_queues(resources),
        *check_ingest_shards(resources),
        *check_autoscaling(resources),
        *check_disruption_budgets(resources),
        *check_single_instances(resources),
        *check_web(resources),
        *check_migrations(resources),
        *check_backups(resources),
        *check_namespace(resources, NAMESPACES[overlay]),
        *check_replicas(resources, overlay),
    ]


# --- the builder itself ----------------------------------------------------------------------


def test_strategic_merge_merges_by_key_and_replaces_atomic_lists() -> None:
    original = {
        "containers": [{"name": "a", "image": "x", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}],
        "command": ["one"],
    }
    patch = {"containers": [{"name": "a", "resources": {"requests": {"cpu": "2"}}}], "command": ["two"]}
    assert strategic_merge(original, patch, "t") == {
        "containers": [{"name": "a", "image": "x", "resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}],
        "command": ["two"],
    }
    assert original["command"] == ["one"], "the original is not modified"


@pytest.mark.parametrize(
    ("patch", "complaint"),
    [
        ({"containers": [{"name": "b"}]}, "adding one is unsupported"),
        ({"containers": [{"image": "y"}]}, "merge key"),
        ({"tolerations": [{"key": "k"}]}, "no merge rule"),
        ({"$patch": "delete"}, "directives"),
        ({"image": None}, "null"),
    ],
)
def test_strategic_merge_refuses_what_it_does_not_implement(patch: dict[str, Any], complaint: str) -> None:
    with pytest.raises(KustomizeError, match=re.escape(complaint)):
        strategic_merge({"containers": [{"name": "a", "image": "x"}]}, patch, "t")


def _write_kustomization(directory: Path, kustomization: dict[str, Any], files: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    for name, content in files.items():
        (directory / name).write_text(content if isinstance(content, str) else yaml.safe_dump_all(content))
    return directory


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "d"},
    "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "oasis"}]}}},
}


@pytest.mark.parametrize(
    ("kustomization", "complaint"),
    [
        ({"commonLabels": {"a": "b"}}, "unsupported kustomization fields"),
        ({"patches": [{"path": "p.yaml", "target": {"kind": "Deployment"}}]}, "no target"),
        ({"patches": [{"path": "missing.yaml"}]}, "missing.yaml"),
        ({"replicas": [{"name": "nothing", "count": 2}]}, "no Deployment or StatefulSet"),
        ({"images": [{"name": "other", "newTag": "1"}]}, "no container uses image other"),
        ({"images": [{"name": "oasis", "digest": "sha256:0"}]}, "images entries"),
        ({"secretGenerator": [{"name": "s", "envs": ["s.env"]}]}, "disableNameSuffixHash"),
        ({"resources": ["https://example.com/x.yaml"]}, "relative paths"),
    ],
)
def test_builder_refuses_what_it_does_not_implement(
    tmp_path: Path, kustomization: dict[str, Any], complaint: str
) -> None:
    directory = _write_kustomization(
        tmp_path,
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": ["d.yaml"]}
        | kustomization,
        {"d.yaml": [DEPLOYMENT]},
    )
    with pytest.raises(KustomizeError, match=re.escape(complaint)):
        kustomize_build(directory)


def test_builder_applies_an_overlay(tmp_path: Path) -> None:
    _write_kustomization(
        tmp_path / "base",
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": ["d.yaml"]},
        {"d.yaml": [DEPLOYMENT]},
    )
    patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}
    patch["spec"] = {"template": {"spec": {"containers": [{"name": "c", "args": ["--x"]}]}}}
    built = kustomize_build(
        _write_kustomization(
            tmp_path / "overlay",
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "ns",
                "resources": ["../base"],
                "patches": [{"path": "p.yaml"}],
                "replicas": [{"name": "d", "count": 3}],
                "images": [{"name": "oasis", "newName": "r/oasis", "newTag": "7"}],
                "secretGenerator": [{"name": "s", "envs": ["s.env"]}],
                "generatorOptions": {"disableNameSuffixHash": True},
            },
            {"p.yaml": [patch], "s.env.example": "# a comment\nA=\n"},
        )
    )
    deployment, secret = built
    assert deployment["metadata"]["namespace"] == "ns"
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"] == [
        {"name": "c", "image": "r/oasis:7", "args": ["--x"]}
    ]
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "ns"},
        "type": "Opaque",
        "data": {"A": ""},
    }
    assert DEPLOYMENT["spec"]["replicas"] == 1, "building does not modify what it read"  # type: ignore[index]


def _kubectl_kustomize() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the builder is not compared with the real kustomize")
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, check=False)
    found = re.search(r"Kustomize Version: v(\d+)", version.stdout)
    if found is None or int(found.group(1)) < 4:
        pytest.skip(f"kubectl's kustomize is older than v4: {version.stdout.strip()!r}")
    return kubectl


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_real_kustomize_builds_the_same(overlay: str, tmp_path: Path) -> None:
    kubectl = _kubectl_kustomize()
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.glob("overlays/*/*.env.example"):
        values = parse_env_file(example)
        example.with_suffix("").write_text("".join(f"{name}=placeholder-{name.lower()}\n" for name in values))
    built = subprocess.run(
        [kubectl, "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    real = list(yaml.safe_load_all(built.stdout))
    ours = kustomize_build(tree / "overlays" / overlay, read=lambda path: path)

    def key(resource: Resource) -> tuple[str, str]:
        return resource["kind"], resource["metadata"]["name"]

    assert sorted(map(key, real)) == sorted(map(key, ours))
    for resource in ours:
        (counterpart,) = [r for r in real if key(r) == key(resource)]
        assert counterpart == resource, f"{name_of(resource)} differs from kustomize's build"


# --- the overlays ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def built(overlay: str) -> list[Resource]:
    return kustomize_build(K8S / "overlays" / overlay)


def test_overlay_is_sound(overlay: str, built: list[Resource]) -> None:
    problems = check_all(built, overlay)
    assert not problems, f"overlays/{overlay}:\n  " + "\n  ".join(problems)


def test_overlay_sets_its_namespace_replicas_image_and_environment(
    overlay: str, built: list[Resource]
) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMESPACES[overlay]
    assert app_image(overlay) != APP_IMAGE_NAME
    assert config_data(built)["OASIS_ENV"] == EXPECTED_OASIS_ENV[overlay]
    web = named(built, "Deployment", "oasis-web")
    assert web is not None
    minimum = 2 if overlay == "prod" else 1
    assert web["spec"]["replicas"] >= minimum, f"{overlay} runs {web['spec']['replicas']} web pods"
    trade = named(built, "Deployment", "oasis-trade")
    assert trade is not None
    assert trade["spec"]["replicas"] == 1
    assert trade["spec"]["strategy"] == {"type": "Recreate"}


def test_overlay_configuration_is_a_valid_environment(
    overlay: str, built: list[Resource], tmp_path: Path
) -> None:
    """oasis-config plus the Secret's keys (with stand-in values) is what every app process reads."""
    secret = named(built, "Secret", "oasis-app-secrets")
    assert secret is not None
    stand_ins = {
        "SECRET_KEY": "k8s-test-only-" + "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ",
        "DATABASE_URL": "postgres://oasis:pw@oasis-timescaledb:5432/oasis",
        "MONGO_URL": "mongodb://oasis:pw@oasis-mongo:27017/oasis?authSource=admin",
    }
    assert set(secret["data"]) == set(stand_ins), "the test's stand-ins must cover the Secret's keys"
    env = read_environment({**config_data(built), **stand_ins}, base_dir=tmp_path)
    assert env.name == EXPECTED_OASIS_ENV[overlay]
    assert not env.debug
    assert env.redis_url is not None, "without Redis, Celery would run eagerly in each process"
    assert env.bind == "0.0.0.0", "the probes and the Service reach the pod's address"
    assert env.port == 8000 == named(built, "Service", "oasis-web")["spec"]["ports"][0]["port"]  # type: ignore[index]
    # The secrets' example files document URLs to the build's own database Services.
    examples = (K8S / "overlays" / overlay / "app-secrets.env.example").read_text()
    for host, port in re.findall(r"@([a-z0-9-]+):(\d+)/", examples):
        service = named(built, "Service", host)
        assert service is not None, f"{host} is no Service of the build"
        assert int(port) in [p["port"] for p in service["spec"]["ports"]], f"{host} has no port {port}"


def test_worker_routing_matches_the_settings() -> None:
    """The queue names the checks expect are the ones the routing produces."""
    shards = settings.OASIS_MARKETDATA_SHARDS
    assert celery_queue_names() == [
        settings.CELERY_TASK_DEFAULT_QUEUE,
        *(f"marketdata.{i}" for i in range(shards)),
        *(f"rules.{i}" for i in range(shards)),
    ]


def test_the_queue_depth_metric_is_documented() -> None:
    assert "oasis_celery_queue_length" in documented_metrics()
    assert len(documented_metrics()) > 20, "docs/metrics.md's tables were not read"


# --- secrets stay out of the repository -----------------------------------------------------


def test_no_secret_values_in_the_repository() -> None:
    for path in K8S.rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            assert (document or {}).get("kind") != "Secret", f"{path}: Secrets are generated, never committed"
    examples = sorted(K8S.glob("overlays/*/*.env.example"))
    assert len(examples) == 2 * len(OVERLAYS), examples
    for example in examples:
        values = parse_env_file(example)
        assert values, f"{example} lists no keys"
        assert not any(values.values()), f"{example} must list its keys with empty values"
        real = example.with_suffix("")
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", str(real)],
            cwd=ROOT,
            check=False,
        )
        assert ignored.returncode == 0, f"{real.relative_to(ROOT)} must be ignored by git"


# --- the checks catch broken manifests ------------------------------------------------------


def _deployment(resources: list[Resource], name: str) -> Resource:
    found = named(resources, "Deployment", name)
    assert found is not None
    return found


def _container(resources: list[Resource], name: str) -> dict[str, Any]:
    return pod_template(_deployment(resources, name))["spec"]["containers"][0]  # type: ignore[no-any-return]


def _drop_queue(resources: list[Resource]) -> None:
    command = _container(resources, "oasis-worker-rules-2")["command"]
    command[command.index("-Q") + 1] = "rules.1"


def _duplicate_symbol(resources: list[Resource]) -> None:
    command = _container(resources, "oasis-ingest-1")["command"]
    command[command.index("--symbols") + 1] += ",BTCUSDT"


def _undocumented_metric(resources: list[Resource]) -> None:
    hpa = named(resources, "HorizontalPodAutoscaler", "oasis-worker-default")
    assert hpa is not None
    hpa["spec"]["metrics"][0]["external"]["metric"]["name"] = "celery_queue_length"


def _stray_pdb(resources: list[Resource]) -> None:
    pdb = named(resources, "PodDisruptionBudget", "oasis-web")
    assert pdb is not None
    pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "oasis-webb"


def _service_port(resources: list[Resource]) -> None:
    service = named(resources, "Service", "oasis-redis")
    assert service is not None
    service["spec"]["ports"][0]["targetPort"] = "rediss"


def _missing_secret(resources: list[Resource]) -> None:
    secret = named(resources, "Secret", "oasis-db-secrets")
    assert secret is not None
    resources.remove(secret)


BREAKAGES: list[
    tuple[str, Callable[[list[Resource]], Any], Callable[[list[Resource], str], list[str]], str]
] = [
    (
        "no readiness probe",
        lambda r: _container(r, "oasis-trade").pop("readinessProbe"),
        lambda r, o: check_probes(r),
        "Deployment/oasis-trade container trade has no readinessProbe",
    ),
    (
        "an exec probe on web",
        lambda r: _container(r, "oasis-web").update(livenessProbe={"exec": {"command": ["true"]}}),
        lambda r, o: check_probes(r),
        "exec livenessProbe without a documented exemption",
    ),
    (
        "no memory limit",
        lambda r: _container(r, "oasis-beat")["resources"]["limits"].pop("memory"),
        lambda r, o: check_resources(r),
        "Deployment/oasis-beat container beat: no limits for ['memory']",
    ),
    (
        "root",
        lambda r: pod_template(_deployment(r, "oasis-web"))["spec"]["securityContext"].update(runAsUser=0),
        lambda r, o: check_security(r, app_image(o)),
        "runs our image as 0",
    ),
    (
        "the base's image",
        lambda r: _container(r, "oasis-trade").update(image="oasis"),
        lambda r, o: check_images(r, app_image(o)),
        "image oasis, not the overlay's",
    ),
    (
        "an unknown variable",
        lambda r: _container(r, "oasis-web").update(env=[{"name": "OASIS_TYPO", "value": "1"}]),
        lambda r, o: check_environment_names(r, app_image(o)),
        "not in KNOWN_VARIABLES: ['OASIS_TYPO']",
    ),
    (
        "a missing Secret",
        _missing_secret,
        lambda r, o: check_references(r),
        "oasis-db-secrets, not in the build",
    ),
    (
        "a selector that misses its pods",
        lambda r: _deployment(r, "oasis-trade")["spec"]["selector"]["matchLabels"].update(extra="x"),
        lambda r, o: check_selectors(r),
        "does not match its pod labels",
    ),
    ("a Service port nothing serves", _service_port, lambda r, o: check_services(r), "port rediss"),
    ("a queue nobody consumes", _drop_queue, lambda r, o: check_queues(r), "queue rules.2 is consumed by []"),
    (
        "a symbol in two shards",
        _duplicate_symbol,
        lambda r, o: check_ingest_shards(r),
        "BTCUSDT is ingested by",
    ),
    (
        "a shard missing",
        lambda r: r.remove(_deployment(r, "oasis-ingest-1")),
        lambda r, o: check_ingest_shards(r),
        "the desk's symbols are",
    ),
    (
        "an undocumented metric",
        _undocumented_metric,
        lambda r, o: check_autoscaling(r),
        "not in docs/metrics.md",
    ),
    ("a budget for no pods", _stray_pdb, lambda r, o: check_disruption_budgets(r), "selects 0 workloads"),
    (
        "two traders",
        lambda r: _deployment(r, "oasis-trade")["spec"].update(replicas=2),
        lambda r, o: check_single_instances(r),
        "Deployment/oasis-trade: replicas 2, must be 1",
    ),
    (
        "a rolling trader",
        lambda r: _deployment(r, "oasis-trade")["spec"].update(strategy={"type": "RollingUpdate"}),
        lambda r, o: check_single_instances(r),
        "strategy must be Recreate",
    ),
    (
        "web dropping a pod while rolling",
        lambda r: _deployment(r, "oasis-web")["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1),
        lambda r, o: check_web(r),
        "maxUnavailable 0",
    ),
    (
        "web without preStop",
        lambda r: _container(r, "oasis-web").pop("lifecycle"),
        lambda r, o: check_web(r),
        "preStop sleep",
    ),
    (
        "a worker that does not wait for migrations",
        lambda r: pod_template(_deployment(r, "oasis-worker-default"))["spec"].pop("initContainers"),
        lambda r, o: check_migrations(r),
        "Deployment/oasis-worker-default: no init container waits",
    ),
    (
        "no PostgreSQL backup",
        lambda r: r.remove(
            next(c for c in of_kind(r, "CronJob") if c["metadata"]["name"] == "oasis-backup-postgres")
        ),
        lambda r, o: check_backups(r),
        "no CronJob runs manage.py backup",
    ),
    (
        "one web pod in prod",
        lambda r: _deployment(r, "oasis-web")["spec"].update(replicas=1),
        lambda r, o: check_replicas(r, o),
        "prod runs 1 web pods, fewer than 2",
    ),
    (
        "the wrong namespace",
        lambda r: _deployment(r, "oasis-web")["metadata"].update(namespace="default"),
        lambda r, o: check_namespace(r, NAMESPACES[o]),
        "Deployment/oasis-web is in namespace default",
    ),
]


@pytest.mark.parametrize(
    ("breakage", "break_it", "check", "complaint"), BREAKAGES, ids=[b[0] for b in BREAKAGES]
)
def test_checks_catch_a_broken_copy(
    breakage: str,
    break_it: Callable[[list[Resource]], Any],
    check: Callable[[list[Resource], str], list[str]],
    complaint: str,
) -> None:
    resources = kustomize_build(K8S / "overlays" / "prod")
    assert not check(resources, "prod"), f"the intact build already fails: {check(resources, 'prod')}"
    break_it(resources)
    problems = check(resources, "prod")
    assert any(complaint in problem for problem in problems), f"{breakage}: {problems}"
