"""The hook as the runtime runs it: the native executable, a real process, an empty environment.

Pins that the hooks.d command (the native ``shieldaudit-hook``, handing
unusual cases to ``python -I -B -m shieldaudit.hook``) works with nothing but
the env install-hooks writes, that the reference path stays off the heavy
packages, that install-hooks' check writes nothing next to the package, that
concurrent hooks keep one chain, and that a lock held past the bound is a
recorded failure, not a hang.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

import shieldaudit
from shieldaudit.core.settings import StoreSettings
from shieldaudit.hook import hooksd
from shieldaudit.store import chain
from shieldaudit.store.verify import verify_container

CID = "ab" * 32
PACKAGE = Path(shieldaudit.__file__).resolve().parent
SRC = str(PACKAGE.parent)
NATIVE = hooksd.native_hook_path()
HEAVY = ("click", "pydantic", "podman", "prometheus_client")

PROBE = """
import os, sys
sys.path.insert(0, {src!r})
import shieldaudit.hook.run as hook
status = hook.run([{stage!r}], dict(os.environ), 0)
print(repr(sorted(sys.modules)))
sys.exit(status)
"""


def site_packages(venv: Path) -> Path:
    """The purelib directory of a venv made by this interpreter."""
    relative = Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    return venv / relative


def command(root: Path, stage: str) -> tuple[list[str], dict[str, str]]:
    """Return the argv and env of the hooks.d file install-hooks would write."""
    settings = StoreSettings(root, fsync="always")
    doc = hooksd.build_hook(stage, NATIVE, hooksd.settings_env(settings))
    hook = doc["hook"]
    env = dict(item.split("=", 1) for item in hook["env"])
    return [hook["path"], *hook["args"][1:]], env


def state(status="creating", pid=1234) -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "id": CID, "status": status, "pid": pid}).encode()


def imported_by_reference(root: Path, data: bytes) -> tuple[int, set[str]]:
    _, env = command(root, "createRuntime")
    probe = PROBE.format(src=SRC, stage="createRuntime")
    result = subprocess.run(
        [sys.executable, "-I", "-B", "-c", probe],
        input=data,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    modules = eval(result.stdout.decode().strip().splitlines()[-1])  # noqa: S307 -- our own repr()
    return result.returncode, set(modules)


def test_hooks_d_runs_the_native_executable():
    """The hooks.d path is this installation's native hook (ELF), argv[0] its name."""
    argv, env = command(Path("/srv/audit"), "poststop")

    hooksd.check_executable(argv[0])
    assert Path(argv[0]).read_bytes()[:4] == b"\x7fELF"
    assert env["SHIELDAUDIT_HOOK_PYTHON"] == sys.executable


def test_reference_path_stays_off_the_heavy_packages(tmp_path):
    """The Python reference path (here: a torn tail) imports no click/pydantic/podman."""
    root = tmp_path / "root"
    imported_by_reference(root, state())
    with (root / "containers" / CID / "audit.jsonl").open("ab") as f:
        f.write(b'{"torn')

    status, modules = imported_by_reference(root, state())

    assert status == 0
    assert "shieldaudit.store.writer" in modules
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_installed_command_works_with_only_its_env(tmp_path):
    """The exact hooks.d argv, run with only the hooks.d env (as Podman's poststop), records."""
    root = tmp_path / "root"
    for stage, status in [("createRuntime", "creating"), ("poststop", "stopped")]:
        argv, env = command(root, stage)
        result = subprocess.run(
            argv,
            input=state(status, 0),
            env=env,
            cwd="/",
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stderr) == (0, b"")

    lines = (root / "containers" / CID / "audit.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["createRuntime", "poststop"]


def test_hook_for_people_works_with_an_empty_environment(tmp_path):
    """`shieldaudit-hook STAGE` by hand with only SHIELDAUDIT_ROOT: uses the Python next to it."""
    root = tmp_path / "root"

    result = subprocess.run(
        [NATIVE, "poststart"],
        input=state("created"),
        env={"SHIELDAUDIT_ROOT": str(root)},
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert (result.returncode, result.stderr) == (0, b"")
    assert (root / "containers" / CID / "audit.jsonl").exists()


def test_install_check_writes_nothing_next_to_the_package(tmp_path):
    """install-hooks' check runs native and reference paths without writing ``__pycache__``.

    The package is a fresh copy (no bytecode yet) imported by a throwaway venv,
    as an editable install imports the source tree: a run without ``-B`` would
    leave ``__pycache__`` there.
    """
    package = tmp_path / "pkg"
    shutil.copytree(PACKAGE, package / "shieldaudit", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages(venv) / "shieldaudit-src.pth").write_text(f"{package}\n")
    python = str(venv / "bin" / "python")
    env = hooksd.settings_env(StoreSettings(tmp_path / "root"), python=python)
    doc = hooksd.build_hook("poststart", NATIVE, env)

    output = hooksd.check_runnable(doc)

    assert f"python reference {sys.version.split()[0]} {python}" in output
    assert f"package {package / 'shieldaudit'}" in output
    assert "wrote one valid chain" in output
    assert sorted(p.name for p in package.rglob("__pycache__")) == []
    assert not (tmp_path / "root").exists()


def test_concurrent_hooks_keep_one_chain(tmp_path):
    """Eight hook processes at once for one container: seq 1..8, and the chain verifies."""
    root = tmp_path / "root"
    argv, env = command(root, "poststart")
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, env=env, stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    for proc in procs:
        _, err = proc.communicate(state("created"), timeout=60)
        assert (proc.returncode, err) == (0, b"")

    lines = (root / "containers" / CID / "audit.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 9))
    assert verify_container(root, CID, chain.NO_KEYS).ok


@pytest.mark.slow
def test_lock_held_past_the_bound_is_a_recorded_failure(tmp_path):
    """A lock held by another process: the hook gives up after ~2 s, records it, exits 0."""
    root = tmp_path / "root"
    argv, env = command(root, "poststart")
    subprocess.run(argv, input=state(), env=env, check=True, timeout=60)
    lock = root / "state" / "locks" / f"{CID}.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                f"import fcntl,time; f=open({str(lock)!r},'rb'); "
                "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        started = time.monotonic()
        result = subprocess.run(
            argv, input=state(), env=env, capture_output=True, timeout=60, check=False
        )
        elapsed = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()

    assert result.returncode == 0
    assert b"timed out after 2s" in result.stderr
    assert elapsed < 30  # bounded, not hung (the bound itself is 2 s)
    (record,) = [
        json.loads(line)
        for line in (root / "state" / "hook-errors.jsonl").read_bytes().splitlines()
    ]
    assert (record["stage"], record["container_id"]) == ("poststart", CID)
