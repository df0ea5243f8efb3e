"""The sidecar image: built from the Containerfile, run, scraped, played with kube play.

The sidecar image is built from the Containerfile on a Debian base image made
with debootstrap (no registry is reachable in CI), offline, from wheels built
on the host. The debootstrapped root filesystem is cached in pytest's cache
directory, so only the first session pays for it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
import yaml

from http_helpers import free_port, http_get, sample, scrape, trail_root, wait_for
from shieldaudit import __version__

if TYPE_CHECKING:
    from collections.abc import Iterator

    from podman_harness import PodmanEnv

REPO = Path(__file__).resolve().parents[3]
BASE_IMAGE = "localhost/shieldaudit-base:test"
#: The host hooks dir the Podman-host deployments mount (install-hooks default).
PODMAN_HOOKS_DIR = "/usr/share/containers/oci/hooks.d"
SIDECAR_IMAGE = "localhost/shieldaudit:test"
DEADLINE_S = 60.0
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")
HOOK = VENV_BIN / "shieldaudit-hook"
SHIELDAUDIT = VENV_BIN / "shieldaudit"


def write_hook_entry(root: Path, container_id: str, stage: str = "createRuntime") -> None:
    """Append one entry from the host, as the runtime would: the real hook, empty env."""
    state = {"ociVersion": "1.0.2", "id": container_id, "status": "creating", "pid": 0}
    state["bundle"] = str(root / "no-bundle")
    result = subprocess.run(
        [str(HOOK), stage],
        input=json.dumps(state),
        env={"SHIELDAUDIT_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def _build_context(dest: Path, wheels_from: Path) -> None:
    """Assemble the build context: what the Containerfile copies, plus the wheels."""
    dest.mkdir()
    for name in ("Containerfile", ".containerignore", "pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(
        REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    shutil.copytree(wheels_from, dest / "wheels")


def host_suite() -> str:
    """The host's Debian release (VERSION_CODENAME), which the base image is built from."""
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip("\"'"):
            return value.strip("\"'")
    pytest.fail("no VERSION_CODENAME in /etc/os-release: not a Debian release", pytrace=False)


def base_python(podman: PodmanEnv) -> str:
    """``major.minor`` of the base image's python3."""
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    return podman.run("run", "--rm", BASE_IMAGE, "python3", "-c", code).stdout.strip()


def build_images(podman: PodmanEnv, work: Path, cache: Path) -> None:
    """Build the base image (cached rootfs) and the sidecar image into ``podman``'s storage.

    The base is the host's own Debian release (the script's default; one
    cached root filesystem per release), so its python3 is the one the wheels
    below are built for.
    """
    base = subprocess.run(
        [str(REPO / "scripts" / "build-base-image.sh"), BASE_IMAGE],
        env={**podman.env, "ROOTFS_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert base.returncode == 0, base.stderr
    (info,) = json.loads(podman.run("image", "inspect", BASE_IMAGE).stdout)
    assert info["Config"]["Labels"]["io.shieldaudit.base.suite"] == host_suite()
    here = "{}.{}".format(*sys.version_info[:2])
    if base_python(podman) != here:
        pytest.fail(
            f"the base image ({host_suite()}) has python{base_python(podman)} but the wheels "
            f"would be built by python{here} ({sys.executable}), which cannot install there: "
            "run the suite from a venv of the host's python3 (make clean venv)",
            pytrace=False,
        )
    wheels = work / "wheels"
    # On the host, where pip's index configuration works: the image build then
    # runs with --network none and proves the documented offline path.
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr
    context = work / "context"
    _build_context(context, wheels)
    podman.run(
        "build",
        "--quiet",
        "--format",
        "docker",
        "--network",
        "none",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--build-arg",
        "WHEELS=wheels",
        "--tag",
        SIDECAR_IMAGE,
        str(context),
        timeout=600,
    )


@pytest.fixture(scope="session")
def sidecar_image(podman_env, tmp_path_factory, request) -> str:
    """The sidecar image built from the Containerfile, once per session."""
    # pytest's cache dir survives sessions: only the first one pays for
    # debootstrap. Without the cache plugin (-p no:cacheprovider), every session does.
    store = getattr(request.config, "cache", None)
    if store is not None:
        cache = Path(store.mkdir("shieldaudit-base-rootfs"))
    else:
        cache = tmp_path_factory.mktemp("rootfs-cache")
    build_images(podman_env, tmp_path_factory.mktemp("image-build"), cache)
    return SIDECAR_IMAGE


def container_alive(podman: PodmanEnv, name: str) -> bool:
    """Whether container ``name`` runs and has not been restarted (a crash loop is not alive)."""
    state = podman.run(
        "inspect", "--format", "{{.State.Status}} {{.RestartCount}}", name, check=False
    ).stdout.split()
    return state == ["running", "0"]


class Sidecar:
    """A sidecar container started with ``podman run -d``; removed on exit."""

    def __init__(self, podman: PodmanEnv, name: str, port: int) -> None:
        """Remember how to reach and remove the container."""
        self.podman = podman
        self.name = name
        self.port = port

    def logs(self) -> str:
        """Return the container's output and state, for failure messages."""
        logs = self.podman.run("logs", self.name, check=False)
        state = self.podman.run(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.name, check=False
        )
        return f"state: {state.stdout}{state.stderr}\n--- logs ---\n{logs.stdout}{logs.stderr}"

    def alive(self) -> bool:
        """Whether the container is still running (and never restarted)."""
        return container_alive(self.podman, self.name)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        """Scrape the container's /metrics from the host."""
        return scrape(self.port)


@contextlib.contextmanager
def run_sidecar(
    podman: PodmanEnv,
    image: str,
    name: str,
    root: Path,
    *extra: str,
    socket_path: Path | None = None,
) -> Iterator[Sidecar]:
    """Run the image's default command (or ``extra``) with ``root`` mounted; yield, remove."""
    port = free_port()
    volumes = ["--volume", f"{root}:/var/lib/shieldaudit"]
    if socket_path is not None:
        volumes += ["--volume", f"{socket_path}:/run/podman/podman.sock"]
    podman.run(
        "run",
        "--detach",
        "--name",
        name,
        # Host networking: scraped from the host without port-forwarding rules
        # (the test configuration gives containers no network at all).
        "--network",
        "host",
        # No healthcheck timer (there is no systemd here); tests run it by hand.
        "--health-interval",
        "disable",
        # A log file `podman logs` can read back (journald may be absent).
        "--log-driver",
        "k8s-file",
        *volumes,
        "--env",
        f"SHIELDAUDIT_METRICS_PORT={port}",
        image,
        *extra,
    )
    try:
        yield Sidecar(podman, name, port)
    finally:
        podman.run("rm", "--force", "--time", "5", name, check=False)


CONTAINER_ID = "c0ffee" * 10 + "c0de"
EVENTS = "shieldaudit_events_total"


def pod_yaml(
    root: Path, socket_path: Path, hooks_dir: Path, image: str, port: int, *args: str
) -> dict:
    """deploy/kube/pod.yaml with this test's image, port and host paths (nothing else changed).

    The hooks dir is mounted at its host path, as in the file, so it is
    swapped on both sides: the sidecar checks the paths install-hooks recorded.
    """
    pod = yaml.safe_load((REPO / "deploy" / "kube" / "pod.yaml").read_text())
    (container,) = pod["spec"]["containers"]
    container["image"] = image
    if args:
        container["args"] = list(args)
    for env in container["env"]:
        if env["name"] == "SHIELDAUDIT_METRICS_PORT":
            env["value"] = str(port)
    host_paths = {
        "/var/lib/shieldaudit": root,
        "/run/podman/podman.sock": socket_path,
        PODMAN_HOOKS_DIR: hooks_dir,
    }
    for volume in pod["spec"]["volumes"]:
        volume["hostPath"]["path"] = str(host_paths[volume["hostPath"]["path"]])
    for mount in container["volumeMounts"]:
        if mount["mountPath"] == PODMAN_HOOKS_DIR:
            mount["mountPath"] = str(hooks_dir)
    return pod


@pytest.mark.podman
def test_image_is_multi_stage_small_and_labelled(podman_env, sidecar_image):
    """The runtime stage holds the venv only: no source tree, no pip; labels, healthcheck, volumes.

    It also runs: ``--version`` prints the package version through the entrypoint.
    """
    (info,) = json.loads(podman_env.run("image", "inspect", sidecar_image).stdout)
    config = info["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "shieldaudit"
    assert labels["org.opencontainers.image.version"] == __version__
    assert config["Entrypoint"] == ["shieldaudit"]
    assert config["Cmd"] == ["sidecar"]
    assert set(config["Volumes"]) == {
        "/var/lib/shieldaudit",
        "/run/podman",
        PODMAN_HOOKS_DIR,
    }
    assert "9469/tcp" in config["ExposedPorts"]
    health = info.get("Healthcheck")
    assert health is not None
    assert "/healthz" in " ".join(health["Test"])
    version = podman_env.run("run", "--rm", sidecar_image, "--version").stdout
    assert version.strip() == f"shieldaudit, version {__version__}"
    leftovers = podman_env.run(
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        sidecar_image,
        "-c",
        "test ! -e /src && ! python3 -c 'import pip' 2>/dev/null && echo clean",
    )
    assert leftovers.stdout.strip() == "clean"
    base_size = json.loads(podman_env.run("image", "inspect", BASE_IMAGE).stdout)[0]["Size"]
    # Small: the venv adds little to the base (no compilers, caches or sources).
    assert info["Size"] - base_size < 60 * 1024 * 1024


@pytest.mark.podman
def test_sidecar_container_counts_entries_written_on_the_host(podman_env, sidecar_image, tmp_path):
    """Trails written on the host by the real hook show up in the container's /metrics.

    The sidecar runs from the image with the trail root mounted (no listener),
    /healthz and /readyz answer, and the image's HEALTHCHECK passes.
    """
    root = trail_root(tmp_path)
    with run_sidecar(
        podman_env, sidecar_image, "sa-deploy-hook", root, "sidecar", "--no-listen"
    ) as sidecar:
        metrics = wait_for(sidecar.metrics, "/metrics", sidecar.logs, sidecar.alive)
        assert sample(metrics, "shieldaudit_build_info", version=__version__) == 1.0
        write_hook_entry(root, CONTAINER_ID)

        def counted() -> bool:
            value = sample(sidecar.metrics(), EVENTS, source="hook", action="createRuntime")
            return value == 1.0

        wait_for(counted, "the hook entry to be counted", sidecar.logs, sidecar.alive)
        assert sample(sidecar.metrics(), "shieldaudit_watched_containers") == 1.0
        assert http_get(f"http://127.0.0.1:{sidecar.port}/healthz") is not None
        wait_for(
            lambda: (http_get(f"http://127.0.0.1:{sidecar.port}/readyz") or (0, ""))[0] == 200,
            "/readyz",
            sidecar.logs,
            sidecar.alive,
        )
        health = podman_env.run("healthcheck", "run", sidecar.name, check=False)
        assert health.returncode == 0, health.stdout + health.stderr


@pytest.mark.podman
def test_sidecar_container_follows_podman_events_through_the_socket(
    podman_env, podman_service, sidecar_image, tmp_path
):
    """With the Podman socket mounted, the in-image listener records a container's lifecycle.

    The image's default command (sidecar with the listener) connects, turns
    ready, and counts the `start` event of a container run on the host.
    """
    root = trail_root(tmp_path)
    with run_sidecar(
        podman_env, sidecar_image, "sa-deploy-events", root, socket_path=podman_service.socket_path
    ) as sidecar:

        def connected() -> bool:
            return sample(sidecar.metrics(), "shieldaudit_listener_connected") == 1.0

        wait_for(connected, "the listener to connect", sidecar.logs, sidecar.alive)
        podman_env.run("run", "--rm", "--name", "sa-deploy-demo", podman_env.image, "true")

        def started() -> bool:
            value = sample(sidecar.metrics(), EVENTS, source="events", action="start")
            return value is not None and value >= 1.0

        wait_for(started, "the start event to be counted", sidecar.logs, sidecar.alive)
        wait_for(
            lambda: (http_get(f"http://127.0.0.1:{sidecar.port}/readyz") or (0, ""))[0] == 200,
            "/readyz",
            sidecar.logs,
            sidecar.alive,
        )


@pytest.mark.podman
def test_kube_play_runs_the_pod_yaml(podman_env, podman_service, sidecar_image, tmp_path):
    """`podman kube play deploy/kube/pod.yaml` runs the sidecar; it counts host-written entries.

    Only the image, the port and the host paths are changed for the test.
    install-hooks writes into the (private) hooks dir on the host first: the
    pod sees those files and exports shieldaudit_hooks_installed 1, and 0 once
    one of them is removed on the host. `kube play --down` removes the pod again.
    """
    root = trail_root(tmp_path)
    hooks_dir = tmp_path / "host-hooks.d"
    installed = subprocess.run(
        [str(SHIELDAUDIT), "--root", str(root), "install-hooks", "--hooks-dir", str(hooks_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    port = free_port()
    spec = tmp_path / "pod.yaml"
    pod = pod_yaml(root, podman_service.socket_path, hooks_dir, sidecar_image, port)
    spec.write_text(yaml.safe_dump(pod))
    podman_env.run("kube", "play", "--log-driver", "k8s-file", str(spec))
    try:

        def logs() -> str:
            result = podman_env.run("logs", "shieldaudit-sidecar", check=False)
            return result.stdout + result.stderr

        write_hook_entry(root, CONTAINER_ID)

        def counted() -> bool:
            value = sample(scrape(port), EVENTS, source="hook", action="createRuntime")
            return value == 1.0

        def alive() -> bool:
            return container_alive(podman_env, "shieldaudit-sidecar")

        wait_for(counted, "the kube-played sidecar to count the entry", logs, alive)
        wait_for(
            lambda: sample(scrape(port), "shieldaudit_listener_connected") == 1.0,
            "the listener in the pod to connect",
            logs,
            alive,
        )
        wait_for(
            lambda: sample(scrape(port), "shieldaudit_hooks_installed") == 1.0,
            "the pod to see the hooks install-hooks wrote on the host",
            logs,
            alive,
        )
        next(hooks_dir.glob("shieldaudit-*.json")).unlink()
        wait_for(
            lambda: sample(scrape(port), "shieldaudit_hooks_installed") == 0.0,
            "the pod to notice a hooks.d file removed on the host",
            logs,
            alive,
        )
    finally:
        podman_env.run("kube", "play", "--down", str(spec), check=False)
    pods = podman_env.run("pod", "ps", "--format", "{{.Name}}").stdout.split()
    assert "shieldaudit" not in pods


@pytest.mark.podman
def test_daemonset_init_container_leaves_a_working_hook_on_the_node(
    podman_env, sidecar_image, tmp_path
):
    """The DaemonSet's init container, run as written, installs hooks the node can run.

    Host directories stand in for the node's hooks dir, /opt/shieldaudit and
    trail root. Every hooks.d file names the native hook inside the copied
    /opt/shieldaudit and that venv's python for the reference path; running
    it on this host (the image is built from the host's own Debian release,
    as the docs require of nodes) with the file's own environment writes an
    entry.
    """
    (daemonset,) = yaml.safe_load_all((REPO / "deploy" / "kube" / "daemonset.yaml").read_text())
    (init,) = daemonset["spec"]["template"]["spec"]["initContainers"]
    node = tmp_path / "node"
    hooks, agent = node / "hooks.d", node / "opt-shieldaudit"
    hooks.mkdir(parents=True)
    agent.mkdir()
    root = trail_root(tmp_path)
    podman_env.run(
        "run",
        "--rm",
        "--read-only",
        "--volume",
        f"{hooks}:/host/hooks.d",
        "--volume",
        f"{agent}:/host/opt/shieldaudit",
        "--volume",
        f"{root}:/var/lib/shieldaudit",
        *[arg for env in init["env"] for arg in ("--env", f"{env['name']}={env['value']}")],
        "--entrypoint",
        init["command"][0],
        sidecar_image,
        *init["command"][1:],
        *init["args"],
    )
    files = sorted(hooks.glob("shieldaudit-*.json"))
    assert [f.name for f in files] == [
        "shieldaudit-createRuntime.json",
        "shieldaudit-poststart.json",
        "shieldaudit-poststop.json",
    ]
    hook = json.loads(files[0].read_text())["hook"]
    env = dict(item.split("=", 1) for item in hook["env"])
    executable, python = hook["path"], env["SHIELDAUDIT_HOOK_PYTHON"]
    assert executable == "/opt/shieldaudit/bin/shieldaudit-hook"
    assert Path(python).parent == Path("/opt/shieldaudit/bin")  # the venv's, as started
    on_node = agent / executable.removeprefix("/opt/shieldaudit/")
    assert on_node.read_bytes()[:4] == b"\x7fELF"
    # As CRI-O would run it on the node, with the node paths of this test.
    assert env["SHIELDAUDIT_ROOT"] == "/var/lib/shieldaudit"
    env["SHIELDAUDIT_ROOT"] = str(root)
    env["SHIELDAUDIT_HOOK_PYTHON"] = str(agent / "bin" / Path(python).name)
    state = {"ociVersion": "1.0.2", "id": CONTAINER_ID, "status": "creating", "pid": 0}
    state["bundle"] = str(root / "no-bundle")
    argv = [str(on_node), *hook["args"][1:]]
    result = subprocess.run(
        argv,
        input=json.dumps(state),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (entry,) = (root / "containers" / CONTAINER_ID / "audit.jsonl").read_text().splitlines()
    assert json.loads(entry)["action"] == "createRuntime"
