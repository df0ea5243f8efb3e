"""Which hooks.d directory Podman reads (hook/hooksdir.py), from containers.conf's rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shieldaudit.cli import cli, run
from shieldaudit.core.errors import EXIT_USAGE, UsageError
from shieldaudit.hook import hooksdir
from shieldaudit.hook.hooksdir import BUILTIN_HOOKS_DIR, Engine, resolve

PODMAN_43 = Engine((4, 3, 1))
PODMAN_54 = Engine((5, 4, 2))
ROOT = 0
USER = 1000
HOME = "/home/u"
# What Debian's /usr/share/containers/containers.conf says about hooks_dir.
DEBIAN_SYSTEM_CONF = b"""
[engine]
# Path to OCI hooks directories for automatically executed hooks.
#
#hooks_dir = [
#  "/usr/share/containers/oci/hooks.d",
#]
"""


class FakeFiles:
    """A file system of a few files: path -> bytes; directories are implied."""

    def __init__(self, files: dict[str, str | bytes]) -> None:
        """Hold the files."""
        self.files = {Path(p): (c.encode() if isinstance(c, str) else c) for p, c in files.items()}
        self.read_paths: list[Path] = []

    def read(self, path: Path) -> bytes | None:
        """Return the file's bytes, None if absent."""
        self.read_paths.append(path)
        return self.files.get(path)

    def conf_files(self, directory: Path) -> list[str]:
        """Return the names directly in ``directory``."""
        # Unsorted on purpose: the resolver must sort.
        return sorted((p.name for p in self.files if p.parent == directory), reverse=True)


def hooks(*dirs: str, append: bool | None = None) -> str:
    items = [f'"{d}"' for d in dirs]
    if append is not None:
        items.append(f"{{append={str(append).lower()}}}")
    return f"[engine]\nhooks_dir = [{', '.join(items)}]\n"


def pick(files, env=None, uid=ROOT, engine=PODMAN_43, home=HOME):
    return resolve(env or {}, uid, home, FakeFiles(files), engine)


def test_fresh_debian_uses_the_builtin_default():
    """No hooks_dir anywhere (Debian's file only has it commented): the built-in dir, said so."""
    choice = pick({"/usr/share/containers/containers.conf": DEBIAN_SYSTEM_CONF})
    assert choice.directory == BUILTIN_HOOKS_DIR == Path("/usr/share/containers/oci/hooks.d")
    assert choice.source is None
    assert choice.reason == "built-in default"
    assert pick({}).directory == BUILTIN_HOOKS_DIR


def test_admin_file_overrides_the_system_file():
    """/etc/containers/containers.conf is read after /usr/share's and wins."""
    choice = pick(
        {
            "/usr/share/containers/containers.conf": hooks("/usr/share/h"),
            "/etc/containers/containers.conf": hooks("/etc/h"),
        }
    )
    assert choice.directory == Path("/etc/h")
    assert choice.source == Path("/etc/containers/containers.conf")
    assert choice.reason == "from /etc/containers/containers.conf"


def test_drop_ins_are_read_in_lexical_order_after_the_admin_file():
    """containers.conf.d/*.conf in name order, later wins; other names are ignored."""
    choice = pick(
        {
            "/etc/containers/containers.conf": hooks("/etc/h"),
            "/etc/containers/containers.conf.d/10-a.conf": hooks("/a"),
            "/etc/containers/containers.conf.d/20-b.conf": hooks("/b"),
            "/etc/containers/containers.conf.d/30-c.conf.bak": hooks("/c"),
            "/etc/containers/containers.conf.d/25-nothing.conf": "[containers]\n",
        }
    )
    assert choice.directory == Path("/b")
    assert choice.source == Path("/etc/containers/containers.conf.d/20-b.conf")


def test_the_last_directory_of_a_list_is_chosen():
    """Of several directories the last is read last, so nothing can mask the files there."""
    choice = pick({"/etc/containers/containers.conf": hooks("/first", "/second")})
    assert choice.directory == Path("/second")
    assert choice.dirs == (Path("/first"), Path("/second"))
    assert choice.reason == (
        "from /etc/containers/containers.conf, the last of its 2 hooks_dir entries"
    )


def test_containers_conf_variable_replaces_every_other_file():
    """CONTAINERS_CONF alone is read: hooks_dir in /etc no longer counts (the harness case)."""
    files = {
        "/etc/containers/containers.conf": hooks("/etc/h"),
        "/tmp/private.conf": "[engine]\nruntime = 'runc'\n",
        "/tmp/with-hooks.conf": hooks("/tmp/h"),
    }
    assert pick(files, env={"CONTAINERS_CONF": "/tmp/private.conf"}).directory == BUILTIN_HOOKS_DIR
    choice = pick(files, env={"CONTAINERS_CONF": "/tmp/with-hooks.conf"})
    assert (choice.directory, choice.source) == (Path("/tmp/h"), Path("/tmp/with-hooks.conf"))


def test_a_missing_containers_conf_file_is_a_usage_error():
    """CONTAINERS_CONF naming nothing: one line saying so (Podman refuses to run too)."""
    with pytest.raises(UsageError, match=r"CONTAINERS_CONF=/nope: no such file") as caught:
        pick({}, env={"CONTAINERS_CONF": "/nope"})
    assert caught.value.exit_code == EXIT_USAGE


def test_override_variable_is_read_last_where_podman_honours_it():
    """CONTAINERS_CONF_OVERRIDE wins even over CONTAINERS_CONF from Podman 4.5; 4.3 ignores it."""
    files = {"/tmp/main.conf": hooks("/main"), "/tmp/override.conf": hooks("/override")}
    env = {"CONTAINERS_CONF": "/tmp/main.conf", "CONTAINERS_CONF_OVERRIDE": "/tmp/override.conf"}
    assert pick(files, env=env, engine=PODMAN_54).directory == Path("/override")
    assert pick(files, env=env, engine=Engine((4, 5, 0))).directory == Path("/override")
    assert pick(files, env=env, engine=PODMAN_43).directory == Path("/main")
    system = {"/etc/containers/containers.conf": hooks("/etc/h"), **files}
    only_override = {"CONTAINERS_CONF_OVERRIDE": "/tmp/override.conf"}
    assert pick(system, env=only_override, engine=PODMAN_54).directory == Path("/override")


def test_user_files_count_for_users_and_for_root_only_from_podman_5():
    """$HOME/.config/containers/containers.conf(.d): any non-root user; root from Podman 5.0."""
    files = {
        "/etc/containers/containers.conf": hooks("/etc/h"),
        f"{HOME}/.config/containers/containers.conf": hooks("/home-h"),
        f"{HOME}/.config/containers/containers.conf.d/50-x.conf": hooks("/home-d"),
    }
    assert pick(files, uid=USER, engine=PODMAN_43).directory == Path("/home-d")
    assert pick(files, uid=ROOT, engine=PODMAN_43).directory == Path("/etc/h")
    assert pick(files, uid=ROOT, engine=PODMAN_54).directory == Path("/home-d")


def test_xdg_config_home_comes_before_home():
    """$XDG_CONFIG_HOME/containers/ replaces $HOME/.config/; $HOME wins over the passwd entry."""
    files = {
        "/xdg/containers/containers.conf": hooks("/xdg-h"),
        "/env-home/.config/containers/containers.conf": hooks("/env-home-h"),
        f"{HOME}/.config/containers/containers.conf": hooks("/passwd-home-h"),
    }
    assert pick(files, env={"XDG_CONFIG_HOME": "/xdg"}, uid=USER).directory == Path("/xdg-h")
    assert pick(files, env={"HOME": "/env-home"}, uid=USER).directory == Path("/env-home-h")
    assert pick(files, uid=USER).directory == Path("/passwd-home-h")
    assert pick(files, uid=USER, home=None).directory == BUILTIN_HOOKS_DIR


def test_append_attribute_extends_the_list_and_persists():
    """{append=true} appends to the list so far (built-in default first), in later files too."""
    files = {
        "/etc/containers/containers.conf": hooks("/a", append=True),
        "/etc/containers/containers.conf.d/10.conf": hooks("/b"),
    }
    choice = pick(files, engine=PODMAN_54)
    assert choice.dirs == (BUILTIN_HOOKS_DIR, Path("/a"), Path("/b"))
    assert choice.directory == Path("/b")
    files["/etc/containers/containers.conf.d/20.conf"] = hooks("/c", append=False)
    assert pick(files, engine=PODMAN_54).dirs == (Path("/c"),)


def test_append_attribute_on_an_old_podman_is_refused():
    """Podman 4.3 refuses {append=...} in a list; so do we, saying which version knows it."""
    files = {"/etc/containers/containers.conf": hooks("/a", append=True)}
    with pytest.raises(UsageError, match=r"4\.8 and later"):
        pick(files, engine=PODMAN_43)


def test_empty_list_means_no_hooks_except_for_root_on_newer_podman():
    """hooks_dir = []: Podman 4.3 runs no hooks (error); root's 4.8+ reads both implicit dirs."""
    files = {"/etc/containers/containers.conf": "[engine]\nhooks_dir = []\n"}
    with pytest.raises(UsageError, match="empty list: Podman runs no hooks"):
        pick(files, engine=PODMAN_43)
    with pytest.raises(UsageError, match="empty list"):
        pick(files, uid=USER, engine=PODMAN_54)
    choice = pick(files, engine=PODMAN_54)
    assert choice.directory == Path("/etc/containers/oci/hooks.d")
    assert choice.dirs == hooksdir.IMPLICIT_HOOKS_DIRS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[engine\nhooks_dir = ['/x']\n", r"is not valid TOML \(.*line 1"),
        ("engine = 3\n", r"\[engine\] must be a table"),
        ("[engine]\nhooks_dir = '/x'\n", "hooks_dir must be a list"),
        ("[engine]\nhooks_dir = ['relative/dir']\n", "'relative/dir' is not an absolute"),
        ("[engine]\nhooks_dir = [1]\n", "1 is not an absolute"),
        ("[engine]\nhooks_dir = ['/x', {append='yes'}]\n", "append must be true or false"),
    ],
)
def test_broken_configuration_is_one_clear_error(text, message):
    """A containers.conf Podman cannot use: one line naming the file and what to do, exit 2."""
    with pytest.raises(UsageError, match=message) as caught:
        pick({"/etc/containers/containers.conf": text}, engine=PODMAN_54)
    text_of_error = str(caught.value)
    assert "\n" not in text_of_error
    assert "/etc/containers/containers.conf" in text_of_error
    assert "--hooks-dir" in text_of_error
    assert caught.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("podman version 4.3.1\n", (4, 3, 1)),
        ("podman version 5.4.2\n", (5, 4, 2)),
        ("podman version 4.9.4-rhel\n", (4, 9, 4)),
        ("podman version 5.0\n", (5, 0, 0)),
        ("no version here\n", None),
    ],
)
def test_podman_version_is_parsed(output, version):
    """`podman --version` output in its several spellings; unparsable is None."""
    assert hooksdir.parse_version(output) == version


def test_unknown_engine_follows_the_current_rules():
    """No podman on PATH: the newest rules (override variable, append, root's user file) apply."""
    unknown = Engine(None)
    assert unknown.reads_override_env
    assert unknown.appends_lists
    assert unknown.reads_user_conf_as_root
    assert not PODMAN_43.reads_override_env
    assert not PODMAN_43.appends_lists
    assert not PODMAN_43.reads_user_conf_as_root


def test_host_files_read_real_files_and_skip_directories(tmp_path):
    """HostFiles: a missing file is None, .d listings hold files only, [] for a missing dir."""
    files = hooksdir.HostFiles()
    (tmp_path / "a.conf").write_text("x")
    (tmp_path / "sub.conf").mkdir()
    assert files.read(tmp_path / "a.conf") == b"x"
    assert files.read(tmp_path / "missing.conf") is None
    assert files.conf_files(tmp_path) == ["a.conf"]
    assert files.conf_files(tmp_path / "missing.d") == []


def test_install_hooks_without_hooks_dir_goes_where_containers_conf_says(tmp_path, monkeypatch):
    """The command resolves via CONTAINERS_CONF, installs there and says where and why."""
    conf = tmp_path / "containers.conf"
    conf.write_text(hooks(str(tmp_path / "read-first"), str(tmp_path / "read-last")))
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    monkeypatch.delenv("CONTAINERS_CONF_OVERRIDE", raising=False)
    root = tmp_path / "root"
    result = CliRunner().invoke(cli, ["--root", str(root), "install-hooks"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "read-last").iterdir()) == [
        "shieldaudit-createRuntime.json",
        "shieldaudit-poststart.json",
        "shieldaudit-poststop.json",
    ]
    assert not (tmp_path / "read-first").exists()
    assert result.output.splitlines()[-1] == (
        f"installed 3 hooks into {tmp_path / 'read-last'}, the hooks directory Podman reads "
        f"(from {conf}, the last of its 2 hooks_dir entries)"
    )
    removed = CliRunner().invoke(cli, ["--root", str(root), "install-hooks", "--uninstall"])
    assert removed.exit_code == 0, removed.output
    assert list((tmp_path / "read-last").iterdir()) == []


def test_install_hooks_with_a_broken_containers_conf_writes_nothing(tmp_path, monkeypatch, capsys):
    """A broken containers.conf: one Error line, exit 2, no file written anywhere."""
    conf = tmp_path / "containers.conf"
    conf.write_text("[engine]\nhooks_dir = [\n")
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    status = run(["--root", str(tmp_path / "root"), "install-hooks"])
    out, err = capsys.readouterr()
    assert status == EXIT_USAGE
    assert out == ""
    assert err.startswith(f"Error: {conf} is not valid TOML (")
    assert err.endswith("); Podman cannot read it either: fix it, or pass --hooks-dir DIR\n")
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["containers.conf"]


def test_explicit_hooks_dir_still_wins(tmp_path, monkeypatch):
    """--hooks-dir is used as given, even when containers.conf names another directory."""
    conf = tmp_path / "containers.conf"
    conf.write_text(hooks(str(tmp_path / "configured")))
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    chosen = tmp_path / "chosen"
    result = CliRunner().invoke(
        cli, ["--root", str(tmp_path / "root"), "install-hooks", "--hooks-dir", str(chosen)]
    )
    assert result.exit_code == 0, result.output
    assert len(list(chosen.iterdir())) == 3
    assert not (tmp_path / "configured").exists()
    assert result.output.splitlines()[-1].endswith("as asked (--hooks-dir)")
