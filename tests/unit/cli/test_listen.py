"""``shieldaudit listen``: what it refuses before it connects to anything."""

from __future__ import annotations

import pytest

from cli_helpers import invoke
from shieldaudit.core.settings import podman_url_problem


@pytest.mark.parametrize(
    "url",
    [
        "garbage",
        "",
        "ftp://host/x",
        "unix://",
        "tcp://",
        "tcp://:8080",
        "ssh:///path",
        "http://",
        "tcp://h:99999",
    ],
)
def test_a_malformed_url_is_a_usage_error_naming_the_option(tmp_path, url):
    """Exit 2 and one line naming --url and what a valid value looks like; nothing written."""
    root = tmp_path / "root"
    result = invoke(root, "listen", "--once", "--url", url)
    assert result.code == 2
    assert result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith(
        "Error: invalid setting podman_url (from option --url): expected a Podman service URL "
    )
    assert f"; got {url!r} (" in line
    assert "unix:///run/podman/podman.sock" in line
    assert "tcp://HOST:PORT" in line
    assert not root.exists()


def test_a_well_formed_url_gets_as_far_as_connecting(tmp_path):
    """A valid URL is not refused as usage: with no service behind it, --once fails with 1."""
    url = f"unix://{tmp_path}/no-podman.sock"
    result = invoke(tmp_path / "root", "listen", "--once", "--url", url)
    assert result.code == 1
    assert "Error: cannot reach Podman at " in result.err


@pytest.mark.parametrize(
    "url",
    [
        "unix:///run/podman/podman.sock",
        "unix://run/podman.sock",
        "http+unix:///run/user/1000/podman/podman.sock",
        "http+unix://%2Frun%2Fpodman%2Fpodman.sock",
        "tcp://127.0.0.1:8080",
        "tcp://podman.example",
        "http://[::1]:8888",
        "ssh://core@host.example:2222/run/podman/podman.sock",
        "http+ssh://core@host.example/run/podman/podman.sock",
    ],
)
def test_every_form_the_podman_client_speaks_is_accepted(url):
    """Sockets by path, TCP and SSH by host: the forms podman-py takes are well formed."""
    assert podman_url_problem(url) is None
