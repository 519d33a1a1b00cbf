"""deploy/kubernetes: Kubernetes 1.33 schemas (offline), sidecar and hardening rules, the embedded config."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest_tools import REPO, module

from gateway.config import Config, load_config

yaml = module("yaml", "pip install pyyaml")

KUBERNETES_VERSION = "1.33"
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").rglob("*.yaml"))
CRD_GROUPS = {"monitoring.coreos.com"}  # no built-in schema: checked by structure instead
GATEWAY = "session-gateway"  # the gateway's container name in every manifest
CONFIG_DIR = "/etc/session-gateway"
PORTS = {"http": 8080, "admin": 9090}

Doc = dict[str, Any]


def documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_documents() -> list[tuple[str, Doc]]:
    return [(f"{p.name}:{d['kind']}/{d['metadata']['name']}", d) for p in MANIFESTS for d in documents(p)]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def gateway(pod: Doc) -> Doc:
    (found,) = [c for c in containers(pod) if c["name"] == GATEWAY]
    return found


def config_map_toml(docs: list[Doc], pod: Doc) -> tuple[str, dict[str, Any]]:
    """The TOML the gateway reads, found through its volume mount at CONFIG_DIR."""
    (mount,) = [m for m in gateway(pod)["volumeMounts"] if m["mountPath"] == CONFIG_DIR]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    name = volume["configMap"]["name"]
    (config_map,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == name]
    text = config_map["data"]["config.toml"]
    return text, tomllib.loads(text)


DOCUMENTS = all_documents()
DEPLOYMENT_FILES = [p for p in MANIFESTS if of_kind(documents(p), "Deployment")]


def test_manifests_exist() -> None:
    assert {p.name for p in MANIFESTS} >= {"sidecar.yaml", "standalone.yaml"}


@pytest.mark.parametrize("doc", [d for _, d in DOCUMENTS], ids=[i for i, _ in DOCUMENTS])
def test_schema(doc: Doc) -> None:
    group = doc["apiVersion"].rpartition("/")[0]
    if group in CRD_GROUPS:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PodMonitor", doc["kind"]
        return  # structure: test_pod_monitor
    kubernetes_validate = module("kubernetes_validate", "pip install kubernetes-validate")
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{'.'.join(map(str, exc.path))}: {exc.message}", pytrace=False)


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=[p.name for p in DEPLOYMENT_FILES])
class TestDeployment:
    """Rules every manifest with a gateway Deployment follows."""

    def pod(self, path: Path) -> tuple[list[Doc], Doc]:
        docs = documents(path)
        (deployment,) = of_kind(docs, "Deployment")
        return docs, deployment["spec"]["template"]["spec"]

    def test_config_loads(self, path: Path, tmp_path: Path) -> None:
        docs, pod = self.pod(path)
        text, _ = config_map_toml(docs, pod)
        file = tmp_path / "config.toml"
        file.write_text(text)
        config = load_config(file)
        assert (config.listen.port, config.admin.port) == (PORTS["http"], PORTS["admin"])

    def test_config_mounted_where_the_image_looks(self, path: Path) -> None:
        docs, pod = self.pod(path)
        dockerfile = (REPO / "Dockerfile").read_text()
        (cmd,) = re.findall(r"^CMD (.+)$", dockerfile, re.M)
        assert json.loads(cmd) == ["--config", f"{CONFIG_DIR}/config.toml"]
        config_map_toml(docs, pod)  # raises unless the ConfigMap with config.toml is mounted there

    def test_env_names_known_config_keys(self, path: Path) -> None:
        _, pod = self.pod(path)
        defaults = load_config()
        for variable in gateway(pod).get("env", []):
            name = variable["name"]
            assert name.startswith("GATEWAY_"), name
            section, _, key = name.removeprefix("GATEWAY_").lower().partition("_")
            assert section in {f.name for f in dataclasses.fields(Config)}, f"{name}: no section [{section}]"
            keys = {f.name for f in dataclasses.fields(getattr(defaults, section))}
            assert key in keys, f"{name}: no key {section}.{key}"

    def test_no_service_links(self, path: Path) -> None:
        _, pod = self.pod(path)
        assert pod["enableServiceLinks"] is False

    def test_probes_on_named_admin_port(self, path: Path) -> None:
        _, pod = self.pod(path)
        container = gateway(pod)
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == PORTS
        probes = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
        for probe, expected in probes.items():
            assert container[probe]["httpGet"] == {"path": expected, "port": "admin"}, probe

    def test_no_sub_path_mounts(self, path: Path) -> None:
        _, pod = self.pod(path)
        for container in containers(pod):
            for mount in container.get("volumeMounts", []):
                assert "subPath" not in mount and "subPathExpr" not in mount, f"{container['name']}: {mount}"

    def test_restricted_pod_security(self, path: Path) -> None:
        _, pod = self.pod(path)
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in containers(pod):
            name, context = container["name"], container["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert context["readOnlyRootFilesystem"] is True, name
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_volumes, f"{name}: /tmp must be an emptyDir"

    def test_resources(self, path: Path) -> None:
        _, pod = self.pod(path)
        for container in containers(pod):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), f"{container['name']} {kind}"

    def test_shutdown_fits_the_grace_period(self, path: Path) -> None:
        docs, pod = self.pod(path)
        _, config = config_map_toml(docs, pod)
        with_pre_stop = [c for c in containers(pod) if "lifecycle" in c]
        pre_stops = [c["lifecycle"]["preStop"]["sleep"]["seconds"] for c in with_pre_stop]
        assert pre_stops, "a preStop sleep covers endpoint removal"
        budget = pod["terminationGracePeriodSeconds"] - max(pre_stops)
        assert config["listen"]["shutdown_timeout"] < budget

    def test_service_exposes_only_the_proxy_port(self, path: Path) -> None:
        docs, _ = self.pod(path)
        (deployment,) = of_kind(docs, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (service,) = of_kind(docs, "Service")
        assert service["spec"]["selector"].items() <= labels.items()
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] in ("http", PORTS["http"])

    def test_pod_monitor(self, path: Path) -> None:
        docs, _ = self.pod(path)
        (deployment,) = of_kind(docs, "Deployment")
        (monitor,) = of_kind(docs, "PodMonitor")
        spec = monitor["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
        jobs = [r["replacement"] for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
        # The alert rules select job=~"session-gateway.*".
        assert jobs and re.fullmatch(r"session-gateway.*", jobs[-1]), jobs


def sidecar() -> tuple[list[Doc], Doc]:
    docs = documents(REPO / "deploy" / "kubernetes" / "sidecar.yaml")
    (deployment,) = of_kind(docs, "Deployment")
    return docs, deployment["spec"]["template"]["spec"]


def test_sidecar_is_native() -> None:
    _, pod = sidecar()
    init = {c["name"]: c for c in pod["initContainers"]}
    assert init[GATEWAY]["restartPolicy"] == "Always"
    assert all(c["name"] != GATEWAY for c in pod["containers"])


def test_sidecar_bot_binds_loopback_only() -> None:
    docs, pod = sidecar()
    (bot,) = pod["containers"]
    assert "ports" not in bot, "the bot must not be reachable from outside the Pod"
    command = " ".join(bot.get("command", []) + bot.get("args", []))
    _, config = config_map_toml(docs, pod)
    upstream = urlsplit(config["upstream"]["url"])
    assert upstream.hostname is not None and ipaddress.ip_address(upstream.hostname).is_loopback
    assert upstream.hostname in command and str(upstream.port) in command
    assert "lifecycle" in bot and bot["lifecycle"]["preStop"]["sleep"]["seconds"] > 0


def test_sidecar_example_bot_runs_from_the_image() -> None:
    _, pod = sidecar()
    (bot,) = pod["containers"]
    if bot["command"][:2] != ["python", "-c"]:
        pytest.skip("the example bot is not the gateway image's demo bot")
    compile(bot["command"][2], "bot", "exec")
    from gateway.demo import create_bot_app

    assert callable(create_bot_app)


def test_sidecar_keeps_sessions_across_container_restarts_in_the_pod() -> None:
    """session.state_file on an emptyDir mounted in the gateway container: it outlives the container, not
    the Pod, as the bot's own sessions do."""
    _, pod = sidecar()
    container = gateway(pod)
    env = {v["name"]: v.get("value") for v in container["env"]}
    path = PurePosixPath(env["GATEWAY_SESSION_STATE_FILE"])
    assert load_config(None, {"GATEWAY_SESSION_STATE_FILE": str(path)}).session.state_file == str(path)
    (mount,) = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent]
    assert not mount.get("readOnly", False)
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume and volume["emptyDir"].get("medium") != "Memory"  # not counted as memory


def test_standalone_runs_three_replicas_sharing_redis(tmp_path: Path) -> None:
    docs = documents(REPO / "deploy" / "kubernetes" / "standalone.yaml")
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == [GATEWAY] and not pod.get("initContainers")
    text, config = config_map_toml(docs, pod)
    assert config["session"]["store"] == "redis"
    assert "redis_url" not in config["session"], "the URL carries a password: it comes from the Secret"
    # The Redis URL and the shared secret come from the Secret, under the keys the header comment creates.
    env = {v["name"]: v for v in gateway(pod)["env"]}
    for name, key in (
        ("GATEWAY_SESSION_REDIS_URL", "redis-url"),
        ("GATEWAY_SESSION_SECRET", "session-secret"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": GATEWAY, "key": key}
        assert f"--from-literal={key}=" in (REPO / "deploy" / "kubernetes" / "standalone.yaml").read_text()
    # Every replica knows every session: no client affinity on the Service.
    (service,) = of_kind(docs, "Service")
    assert "sessionAffinity" not in service["spec"]
    file = tmp_path / "config.toml"
    file.write_text(text)
    session = load_config(file, {"GATEWAY_SESSION_REDIS_URL": "redis://:pw@redis:6379/0"}).session
    assert (session.store, session.redis_url) == ("redis", "redis://:pw@redis:6379/0")
