"""Static checks of the deployment files: each is checked by the tool that consumes it.

systemd units with ``systemd-analyze verify``, Prometheus config and rules with
``promtool`` (including the alert unit tests), Kubernetes and kube-play YAML
parsed and checked for what the agent needs, the Quadlet unit, the Grafana
dashboard (its queries checked by promtool) and the Containerfile's shape.
No container is built here (tests/integration/deploy/test_image.py does that).
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shieldaudit import __version__
from shieldaudit.fleet.collect import Counts

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBE = DEPLOY / "kube"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "shieldaudit-dashboard.json"
CONTAINERFILE = REPO / "Containerfile"

TRAIL_ROOT = "/var/lib/shieldaudit"
HOOKS_DIR = "/etc/containers/oci/hooks.d"
BUILTIN_HOOKS_DIR = "/usr/share/containers/oci/hooks.d"
#: Where install-hooks writes on a Podman host with the defaults, hence the
#: directory the container deployments mount for the sidecar, at that same path.
PODMAN_HOOKS_DIR = BUILTIN_HOOKS_DIR
#: Every metric name the sidecar exports (docs/sidecar.md, "Metrics"); anything else is a typo.
METRICS = {
    "shieldaudit_events_total",
    "shieldaudit_rotations_total",
    "shieldaudit_watched_containers",
    "shieldaudit_parse_errors_total",
    "shieldaudit_hook_errors_total",
    "shieldaudit_integrity_failures_total",
    "shieldaudit_listener_connected",
    "shieldaudit_listener_reconnects_total",
    "shieldaudit_build_info",
    "shieldaudit_unaudited_starts_total",
    "shieldaudit_hooks_installed",
    "shieldaudit_last_seal_timestamp_seconds",
}


def tool(name: str) -> str:
    """Return the path of a checker; CI installs them (scripts/install-test-deps.sh)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run scripts/install-test-deps.sh", pytrace=False)
    return path


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False, timeout=120)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bshieldaudit_[a-z_]+", expr))


def load_yaml(path: Path) -> list[dict]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} holds no document"
    return docs


# --- systemd -------------------------------------------------------------------------------


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def verify_units(root: Path, units: dict[str, str], name: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of unit ``name`` in a scratch ``root`` holding ``units``.

    The root also holds stand-ins for the commands the units run (the venv's
    entry point, install(1)), so "command not executable" would be the only
    difference from a real host. Generators and
    the units it pulls in (sysinit.target, ...) are left out: only the unit's
    own problems count.
    """
    analyze = tool("systemd-analyze")
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for unit_name, text in units.items():
        (system / unit_name).write_text(text)
    # The venv's entry point, and what the hooks unit's ExecStartPre= runs.
    for command in (
        "opt/shieldaudit/bin/shieldaudit",
        "usr/local/bin/shieldaudit",
        "usr/bin/install",
    ):
        entry = root / command
        entry.parent.mkdir(parents=True)
        entry.write_text("#!/bin/sh\n")
        entry.chmod(0o755)
    return run(
        analyze,
        "verify",
        f"--root={root}",
        "--man=no",
        "--generators=no",
        "--recursive-errors=no",
        f"/etc/systemd/system/{name}",
    )


@pytest.mark.parametrize(
    "name", ["shieldaudit.service", "shieldaudit-hooks.service", "shieldaudit-collect.service"]
)
def test_systemd_units_verify_cleanly(tmp_path, name):
    """`systemd-analyze verify` accepts each unit without a single warning.

    Unknown keys or bad values print warnings, which fail this test. The
    collector's unit lives with its rsyslog configuration (deploy/rsyslog).
    """
    units = {
        path.name: path.read_text()
        for path in (*SYSTEMD.glob("*.service"), *(DEPLOY / "rsyslog").glob("*.service"))
    }
    result = verify_units(tmp_path, units, name)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_systemd_verify_catches_a_bad_unit(tmp_path):
    """The verify setup above has teeth: one bad value fails it, and the report points at it.

    What is checked is what the check means, not one systemd version's prose
    (252 says "Failed to parse protect system value", 257 "Failed to parse
    ProtectSystem=no!"): a non-zero exit and a report naming the unit file and
    line of the bad directive, with the bad value.
    """
    text = (SYSTEMD / "shieldaudit.service").read_text()
    assert "ProtectSystem=strict" in text
    bad = text.replace("ProtectSystem=strict", "ProtectSystem=no!")
    line = bad.splitlines().index("ProtectSystem=no!") + 1
    result = verify_units(tmp_path, {"bad.service": bad}, "bad.service")
    assert result.returncode != 0
    where = f"{tmp_path}/etc/systemd/system/bad.service:{line}:"
    reports = [r for r in result.stderr.splitlines() if r.startswith(where)]
    assert reports, result.stderr
    assert all("no!" in r for r in reports), result.stderr


def test_sidecar_unit_is_hardened_and_writes_only_the_root():
    """The sidecar unit runs `shieldaudit sidecar` with the listener under strict hardening."""
    service = unit(SYSTEMD / "shieldaudit.service")["Service"]
    assert service["ExecStart"].split()[1:] == ["sidecar"]
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == TRAIL_ROOT
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["PrivateTmp"] == "yes"
    assert service["StateDirectoryMode"] == "0700"
    assert "AF_UNIX" in service["RestrictAddressFamilies"]


def test_hooks_unit_installs_fail_open_into_the_hooks_dir():
    """The hooks unit runs install-hooks once, fail-open, where Podman reads hooks.

    No --hooks-dir: install-hooks resolves the directory from containers.conf,
    by default Podman's built-in one, which is created first; the unit may
    write only the hooks dirs and the trail root.
    """
    hooks = unit(SYSTEMD / "shieldaudit-hooks.service")
    service = hooks["Service"]
    argv = service["ExecStart"].split()
    assert argv[1] == "install-hooks"
    assert "--fail-closed" not in argv
    assert "--hooks-dir" not in argv
    assert service["ExecStartPre"].split()[-1] == BUILTIN_HOOKS_DIR
    assert service["Type"] == "oneshot"
    writable = service["ReadWritePaths"].split()
    assert set(writable) == {BUILTIN_HOOKS_DIR, HOOKS_DIR, TRAIL_ROOT}
    assert service["ProtectSystem"] == "strict"
    assert "podman.service" in hooks["Unit"]["Before"].split()


# --- Quadlet -------------------------------------------------------------------------------


def test_quadlet_container_runs_the_image_with_what_the_sidecar_needs():
    """The Quadlet unit names the image, mounts the root, the socket and the hooks dir, installs.

    The hooks dir is Podman's built-in one (where install-hooks writes by
    default), read only and at its host path: the sidecar checks the recorded paths.
    """
    quadlet = unit(DEPLOY / "quadlet" / "shieldaudit.container")
    container = quadlet["Container"]
    assert container["Image"].startswith("localhost/shieldaudit")
    assert container["Exec"] == "sidecar"
    volumes = [
        line
        for line in (DEPLOY / "quadlet" / "shieldaudit.container").read_text().splitlines()
        if line.startswith("Volume=")
    ]
    targets = {v.split("=", 1)[1].split(":")[1] for v in volumes}
    assert targets == {TRAIL_ROOT, "/run/podman/podman.sock", PODMAN_HOOKS_DIR}
    assert f"Volume={PODMAN_HOOKS_DIR}:{PODMAN_HOOKS_DIR}:ro" in volumes
    assert "WantedBy" in quadlet["Install"]


# --- Containerfile -------------------------------------------------------------------------


def test_containerfile_shape():
    """Multi-stage on ARG BASE_IMAGE (an official slim Python by default), labelled, healthy.

    The runtime stage declares the agent's volumes, exposes the metrics port and
    checks /healthz; the default command is the sidecar.
    """
    text = CONTAINERFILE.read_text()
    instructions = [
        line.split(None, 1)
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    keywords = [parts[0] for parts in instructions]
    assert instructions[0] == ["ARG", "BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm"]
    froms = [parts[1] for parts in instructions if parts[0] == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert "COPY --from=build /opt/shieldaudit /opt/shieldaudit" in text
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text
    volume = next(parts[1] for parts in instructions if parts[0] == "VOLUME")
    assert set(json.loads(volume)) == {TRAIL_ROOT, "/run/podman", PODMAN_HOOKS_DIR}
    assert "/healthz" in next(parts[1] for parts in instructions if parts[0] == "HEALTHCHECK")
    assert keywords.count("EXPOSE") == 1
    assert ["ENTRYPOINT", '["shieldaudit"]'] in instructions
    assert ["CMD", '["sidecar"]'] in instructions
    assert f"ARG VERSION={__version__}" in text


# --- Kubernetes and kube play ------------------------------------------------------------


def containers_of(doc: dict) -> tuple[dict, list[dict], list[dict]]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "DaemonSet" else doc["spec"]
    return spec, spec.get("initContainers", []), spec["containers"]


def mounts(container: dict, spec: dict) -> dict[str, str]:
    """Map each mount path of ``container`` to the host path behind it."""
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    return {m["mountPath"]: host[m["name"]] for m in container["volumeMounts"]}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_pod_yaml_runs_the_sidecar_on_the_host_paths():
    """pod.yaml: one sidecar with the trail root, the Podman socket and hooks dir from the host.

    The hooks dir is the one install-hooks uses with Podman's defaults, read
    only, at its host path.
    """
    (pod,) = load_yaml(KUBE / "pod.yaml")
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    spec, init, (sidecar,) = containers_of(pod)
    assert init == []
    assert sidecar["args"] == ["sidecar"]
    assert mounts(sidecar, spec) == {
        TRAIL_ROOT: TRAIL_ROOT,
        "/run/podman/podman.sock": "/run/podman/podman.sock",
        PODMAN_HOOKS_DIR: PODMAN_HOOKS_DIR,  # read only: shieldaudit_hooks_installed
    }
    (hooks,) = (m for m in sidecar["volumeMounts"] if m["mountPath"] == PODMAN_HOOKS_DIR)
    assert hooks["readOnly"] is True
    assert env_of(sidecar)["SHIELDAUDIT_ROOT"] == TRAIL_ROOT
    assert spec["hostNetwork"] is True


def test_daemonset_installs_hooks_on_the_node_then_runs_the_sidecar():
    """The DaemonSet: an init container runs install-hooks into the node's hooks dir.

    It copies the agent to the same path on the node first (the hooks.d files
    name it); the sidecar mounts the node's trail root and runtime socket dir,
    exposes a named metrics port and probes /healthz and /readyz.
    """
    (ds,) = load_yaml(KUBE / "daemonset.yaml")
    assert (ds["apiVersion"], ds["kind"]) == ("apps/v1", "DaemonSet")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec, (init,), (sidecar,) = containers_of(ds)
    script = " ".join(init["args"])
    assert script.index("cp -a /opt/shieldaudit/. /host/opt/shieldaudit/") < script.index(
        "install-hooks --hooks-dir /host/hooks.d"
    )
    assert "--fail-closed" not in script
    assert mounts(init, spec) == {
        "/host/hooks.d": HOOKS_DIR,
        "/host/opt/shieldaudit": "/opt/shieldaudit",
        TRAIL_ROOT: TRAIL_ROOT,
    }
    assert sidecar["args"][0] == "sidecar"
    assert mounts(sidecar, spec) == {
        TRAIL_ROOT: TRAIL_ROOT,
        "/run/podman": "/run/podman",
        "/host/hooks.d": HOOKS_DIR,  # where the init container wrote them, read only
    }
    # The pod IP, not loopback: Prometheus scrapes it from outside the pod.
    assert env_of(sidecar)["SHIELDAUDIT_METRICS_ADDR"] == "0.0.0.0"  # noqa: S104
    (port,) = sidecar["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", 9469)
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"operator": "Exists"} in spec["tolerations"]


def test_service_and_servicemonitor_select_the_daemonset_pods():
    """The Service selects the DaemonSet's pods; the ServiceMonitor scrapes its metrics port."""
    (ds,) = load_yaml(KUBE / "daemonset.yaml")
    (service,) = load_yaml(KUBE / "service.yaml")
    (monitor,) = load_yaml(KUBE / "servicemonitor.yaml")
    (namespace,) = load_yaml(KUBE / "namespace.yaml")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    names = {doc["metadata"].get("namespace") for doc in (ds, service, monitor)}
    assert names == {namespace["metadata"]["name"]}
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (svc_port,) = service["spec"]["ports"]
    assert (svc_port["name"], svc_port["port"], svc_port["targetPort"]) == (
        "metrics",
        9469,
        "metrics",
    )
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_config_and_rules_check():
    """`promtool check config` accepts the scrape config (and the rule file it loads)."""
    result = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(tool("promtool"), "check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_behave_as_their_unit_tests_say():
    """`promtool test rules`: each alert fires exactly when its tests say, with its text."""
    result = run(tool("promtool"), "test", "rules", "alerts_test.yml", cwd=PROMETHEUS / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_issue_and_use_only_real_metrics():
    """The required alerts exist and every query names only metrics shieldaudit exports."""
    (rules,) = load_yaml(PROMETHEUS / "alerts.yml")
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert "shieldaudit_hook_errors_total" in alerts["ShieldauditHookErrors"]["expr"]
    assert "shieldaudit_integrity_failures_total" in alerts["ShieldauditIntegrityFailure"]["expr"]
    assert alerts["ShieldauditListenerDisconnected"]["for"] == "5m"
    assert 'source="hook"' in alerts["ShieldauditNoHookEventsWhileContainersRun"]["expr"]
    assert "shieldaudit_unaudited_starts_total" in alerts["ShieldauditUnauditedStart"]["expr"]
    assert alerts["ShieldauditUnauditedStart"]["labels"]["severity"] == "critical"
    assert "shieldaudit_hooks_installed" in alerts["ShieldauditHooksNotInstalled"]["expr"]
    assert "shieldaudit_last_seal_timestamp_seconds" in alerts["ShieldauditSealsStale"]["expr"]
    # The collector's alerts read collect's own metrics (its textfile).
    collect_metrics = metric_names(Counts(backlog=0).render())
    for name in ("Conflict", "Refused", "Gap", "Backlog"):
        assert metric_names(alerts[f"ShieldauditFleet{name}"]["expr"]) <= collect_metrics
    assert "/var/spool/shieldaudit-collect" in alerts["ShieldauditFleetSpoolDiskLow"]["expr"]
    for rule in alerts.values():
        assert metric_names(rule["expr"]) <= METRICS | collect_metrics, rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"]


def test_scrape_config_targets_the_default_port():
    """The scrape job points at the sidecar's default port and loads the alert rules."""
    (config,) = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "shieldaudit"
    assert job["static_configs"][0]["targets"] == ["localhost:9469"]
    assert config["rule_files"] == ["alerts.yml"]


# --- Grafana -------------------------------------------------------------------------------


def test_dashboard_queries_are_valid_promql_over_real_metrics(tmp_path):
    """Every panel query parses (promtool, as recording rules) and names only real metrics.

    Grafana variables are replaced with the values they take so promtool sees
    plain PromQL.
    """
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "shieldaudit-overview"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    seen: set[str] = set()
    for expr in exprs:
        seen |= metric_names(expr)
    assert seen <= METRICS
    assert seen >= METRICS - {"shieldaudit_build_info"} - {"shieldaudit_listener_reconnects_total"}
    plain = [
        expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
        for expr in exprs
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(plain)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
