#!/usr/bin/env bash
# Run the shieldaudit agent on this host (what `make run` does): install the
# OCI hooks, fail-open, then run the sidecar with the Podman events listener
# in the foreground, on the built-in defaults (or SHIELDAUDIT_* settings).
# Prints one line saying where the trails and the metrics are. Safe to run
# again: install-hooks replaces its files atomically and the sidecar resumes
# from its checkpoint. Ctrl-C stops it; the hooks stay installed (remove them
# with `shieldaudit install-hooks --uninstall`).
#
# Usage: scripts/run-agent.sh [SIDECAR-OPTION...]   e.g. --emit
#
# Environment:
#   VENV          the virtualenv holding shieldaudit (default: .venv of this checkout)
#   HOOKS_DIR     where to install the hooks (default: install-hooks' default,
#                 /etc/containers/oci/hooks.d, for root; for other users
#                 ~/.config/containers/oci/hooks.d, which rootless Podman reads
#                 only when `hooks_dir` in containers.conf lists it)
#   START_PODMAN  auto (default): when the Podman API socket is missing, start
#                 `podman system service` on it for as long as the agent runs;
#                 no: never (the listener then retries until it appears)
#   SHIELDAUDIT_* the agent's settings (root, metrics address and port, ...)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$here/.venv}
START_PODMAN=${START_PODMAN:-auto}
shieldaudit=$VENV/bin/shieldaudit
python=$VENV/bin/python

if [[ ! -x $shieldaudit ]]; then
    echo "run-agent: $shieldaudit not found: create the venv first (make venv)" >&2
    exit 1
fi

# The effective settings, resolved exactly as the sidecar will resolve them
# (option > environment > config file > default).
settings=$("$python" - <<'PY'
from shieldaudit.config import load_settings
from shieldaudit.errors import ShieldAuditError
import sys
try:
    s = load_settings()
except ShieldAuditError as exc:
    sys.exit(f"run-agent: {exc}")
print(s.root)
print(s.metrics_addr)
print(s.metrics_port)
print(s.podman_url)
PY
)
{ read -r root; read -r addr; read -r port; read -r podman_url; } <<<"$settings"

hooks_args=()
if [[ -n ${HOOKS_DIR:-} ]]; then
    hooks_args=(--hooks-dir "$HOOKS_DIR")
elif [[ $(id -u) -ne 0 ]]; then
    hooks_args=(--hooks-dir "${XDG_CONFIG_HOME:-$HOME/.config}/containers/oci/hooks.d")
    echo "run-agent: rootless: Podman runs these hooks only if containers.conf sets" \
        "hooks_dir = [\"${hooks_args[1]}\"] (docs/operations.md)" >&2
fi

# The hooks write the trails as soon as they are installed: the root must
# exist first, private (a group- or world-writable root is refused).
install -d -m 0700 "$root"
# Fail-open on purpose, whatever the environment or config file says: a host
# that tries shieldaudit must not lose the ability to start containers. Choose
# fail-closed deliberately, with install-hooks --fail-closed.
SHIELDAUDIT_FAIL_CLOSED=0 "$shieldaudit" install-hooks "${hooks_args[@]}" >&2

podman_pid=
cleanup() {
    if [[ -n $podman_pid ]]; then
        kill "$podman_pid" 2>/dev/null || true
        wait "$podman_pid" 2>/dev/null || true
    fi
}
socket=${podman_url#unix://}
if [[ $START_PODMAN == auto && $podman_url == unix://* && ! -S $socket ]] && command -v podman >/dev/null; then
    # `podman system service` does not create the socket's directory.
    mkdir -p "$(dirname "$socket")"
    podman system service --time=0 "$podman_url" </dev/null >&2 &
    podman_pid=$!
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    echo "run-agent: started the Podman API service on $podman_url (pid $podman_pid)" >&2
fi

shown_addr=$addr
if [[ $addr == 0.0.0.0 || $addr == "::" || $addr == "" ]]; then
    shown_addr=localhost
fi
echo "shieldaudit: trails in $root (shieldaudit ls; shieldaudit show NAME)," \
    "metrics at http://$shown_addr:$port/metrics"

if [[ -z $podman_pid ]]; then
    exec "$shieldaudit" sidecar "$@"
fi
# Not exec: the Podman service started above must be stopped when we stop.
"$shieldaudit" sidecar "$@" &
sidecar_pid=$!
trap 'kill -TERM "$sidecar_pid" 2>/dev/null || true' INT TERM
status=0
wait "$sidecar_pid" || status=$?
# A signal interrupts `wait`; wait again for the sidecar to finish flushing.
if kill -0 "$sidecar_pid" 2>/dev/null; then
    wait "$sidecar_pid" || status=$?
fi
exit "$status"
