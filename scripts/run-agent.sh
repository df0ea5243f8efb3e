#!/usr/bin/env bash
# Run the shieldaudit agent on this host (what `make run` does):
#
#   1. install this checkout, non-editable, into its own virtualenv (PREFIX,
#      /opt/shieldaudit for root) and link `shieldaudit` and `shieldaudit-hook`
#      into BINDIR (/usr/local/bin): the hooks never depend on the checkout,
#      which can then be moved or deleted;
#   2. install the OCI hooks, fail-open, into the hooks directory this host's
#      Podman reads (install-hooks resolves it from containers.conf);
#   3. build the local busybox image (DEMO_IMAGE) from busybox-static, as the
#      tests do: `podman run busybox` then needs no registry;
#   4. prove the hooks work: start a container and check that the hooks
#      recorded it. When Podman itself cannot start containers (e.g. `error
#      setting rlimit type 7: operation not permitted` where the host forbids
#      Podman's default ulimits), print the one-line fix and stop;
#   5. run the sidecar with the Podman events listener in the foreground,
#      starting `podman system service` when its socket is missing. Ctrl-C
#      stops it quietly (exit 0); the hooks stay installed (remove them with
#      `shieldaudit install-hooks --uninstall`).
#
# Safe to run again: the install is refreshed from the checkout, install-hooks
# replaces its own files atomically and the sidecar resumes from its checkpoint.
#
# Usage: scripts/run-agent.sh [SIDECAR-OPTION...]   e.g. --emit
#
# Environment:
#   PREFIX        virtualenv to install into (default /opt/shieldaudit for root,
#                 ${XDG_DATA_HOME:-~/.local/share}/shieldaudit otherwise)
#   BINDIR        where the commands are linked (default /usr/local/bin for root,
#                 ~/.local/bin otherwise)
#   HOOKS_DIR     install the hooks there instead of where Podman reads them
#                 (the check in step 4 then tells whether Podman runs them)
#   DEMO_IMAGE    the local image to build and check with (localhost/busybox:latest)
#   START_PODMAN  auto (default): when the Podman API socket is missing, start
#                 `podman system service` on it for as long as the agent runs;
#                 no: never (the listener then retries until it appears)
#   SHIELDAUDIT_* the agent's settings (root, metrics address and port, ...)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $(id -u) -eq 0 ]]; then
    PREFIX=${PREFIX:-/opt/shieldaudit}
    BINDIR=${BINDIR:-/usr/local/bin}
else
    PREFIX=${PREFIX:-${XDG_DATA_HOME:-$HOME/.local/share}/shieldaudit}
    BINDIR=${BINDIR:-$HOME/.local/bin}
fi
DEMO_IMAGE=${DEMO_IMAGE:-localhost/busybox:latest}
START_PODMAN=${START_PODMAN:-auto}
shieldaudit=$PREFIX/bin/shieldaudit
python=$PREFIX/bin/python
CHECK_DEADLINE_S=20

say() { echo "run-agent: $*" >&2; }

# 1. A non-editable install: what the hooks.d files name lives in PREFIX only.
if [[ ! -x $python ]]; then
    python3 -m venv "$PREFIX"
fi
say "installing $here into $PREFIX"
"$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location "$here"
mkdir -p "$BINDIR"
for cmd in shieldaudit shieldaudit-hook; do
    link=$BINDIR/$cmd
    if [[ -e $link && ! -L $link ]]; then
        say "$link exists and is not a link: left alone (use $PREFIX/bin/$cmd)"
    else
        ln -sfn "$PREFIX/bin/$cmd" "$link"
    fi
done
case ":$PATH:" in
*":$BINDIR:"*) ;;
*) say "$BINDIR is not on PATH: add it, or use $PREFIX/bin/shieldaudit" ;;
esac

# The effective settings, resolved exactly as the sidecar will resolve them
# (option > environment > config file > default).
settings=$("$python" - <<'PY'
from shieldaudit.core.settings import load_settings
from shieldaudit.core.errors import ShieldAuditError
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

# 2. The hooks write the trails as soon as they are installed: the root must
# exist first, private (a group- or world-writable root is refused).
install -d -m 0700 "$root"
hooks_args=()
if [[ -n ${HOOKS_DIR:-} ]]; then
    hooks_args=(--hooks-dir "$HOOKS_DIR")
fi
# Fail-open on purpose, whatever the environment or config file says: a host
# that tries shieldaudit must not lose the ability to start containers. Choose
# fail-closed deliberately, with install-hooks --fail-closed.
installed=$(SHIELDAUDIT_FAIL_CLOSED=0 "$shieldaudit" install-hooks "${hooks_args[@]}")
sed '$d' <<<"$installed" >&2
echo "shieldaudit: $(tail -n 1 <<<"$installed")"

# 3. The local image, without a registry.
image_ok=yes
if ! "$here/scripts/build-test-image.sh" "$DEMO_IMAGE"; then
    image_ok=no
fi

# 4. Prove it.
podman_error() { grep -v '^\s*$' <<<"$1" | tail -n 1; }

ulimits_fix() {
    # Podman's default ulimits exceed what this host lets it set: find limits
    # that work, and print the one line that makes them Podman's defaults.
    local hard_nofile candidate args limit
    hard_nofile=$(ulimit -Hn)
    [[ $hard_nofile == unlimited ]] && hard_nofile=1048576
    for candidate in "nofile=$hard_nofile:$hard_nofile nproc=4096:4096" \
        "nofile=1024:1024 nproc=1024:1024"; do
        args=()
        for limit in $candidate; do args+=(--ulimit "$limit"); done
        if podman run --rm --network none "${args[@]}" "$DEMO_IMAGE" true >/dev/null 2>&1; then
            local quoted=${candidate// /\", \"}
            local line="default_ulimits = [\"$quoted\"]"
            if [[ -n ${CONTAINERS_CONF:-} ]]; then
                say "fix: add $line to the [containers] table of $CONTAINERS_CONF, then run this again"
            else
                say "fix (one line), then run this again:"
                echo "mkdir -p /etc/containers/containers.conf.d && printf '[containers]\\n$line\\n' > /etc/containers/containers.conf.d/50-ulimits.conf" >&2
            fi
            return 0
        fi
    done
    say "no smaller ulimits helped either: see Podman's error above"
}

hook_stages() {
    # The hook entries recorded for container $1, one stage per line.
    "$shieldaudit" show "$1" --json --source hook 2>/dev/null |
        "$python" -c 'import json, sys; [print(json.loads(l)["action"]) for l in sys.stdin if l.strip()]' ||
        true
}

check_hooks() {
    local name out stages deadline
    if ! command -v podman >/dev/null; then
        say "cannot check the hooks: podman is not installed"
        return 0
    fi
    if [[ $image_ok != yes ]]; then
        say "cannot check the hooks: the image $DEMO_IMAGE could not be built (see above)"
        return 0
    fi
    name=shieldaudit-check-$(date +%Y%m%d%H%M%S)-$$
    if ! out=$(podman run --rm --network none --name "$name" "$DEMO_IMAGE" true 2>&1); then
        if grep -q 'error setting rlimit' <<<"$out"; then
            say "Podman cannot start any container on this host with its default ulimits:" \
                "$(podman_error "$out")"
            ulimits_fix
        else
            say "Podman cannot start a container, so the hooks cannot be checked: $(podman_error "$out")"
        fi
        exit 1
    fi
    # poststop runs as the container is cleaned up: give it a moment.
    deadline=$((SECONDS + CHECK_DEADLINE_S))
    while :; do
        stages=$(hook_stages "$name" | sort -u | paste -sd, -)
        [[ $stages == *createRuntime* && $stages == *poststop* ]] && break
        ((SECONDS < deadline)) || break
        sleep 0.2
    done
    if [[ -z $stages ]]; then
        say "the hooks did NOT run: container $name started but recorded no hook entry;" \
            "Podman does not read the directory install-hooks wrote to" \
            "(see podman --log-level=debug run ... | grep hooks)"
        exit 1
    fi
    echo "shieldaudit: hooks verified: container $name was recorded by the hooks ($stages)"
}
check_hooks

# 5. The agent.
podman_pid=
cleanup() {
    if [[ -n $podman_pid ]]; then
        kill "$podman_pid" 2>/dev/null || true
        # Bounded: a service still draining connections gets 10 s, then SIGKILL.
        for _ in $(seq 50); do
            kill -0 "$podman_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$podman_pid" 2>/dev/null || true
        wait "$podman_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
socket=${podman_url#unix://}
if [[ $START_PODMAN == auto && $podman_url == unix://* && ! -S $socket ]] && command -v podman >/dev/null; then
    # `podman system service` does not create the socket's directory.
    mkdir -p "$(dirname "$socket")"
    # In a session of its own, so Ctrl-C reaches the sidecar first: Podman
    # handles SIGINT even in a background job, and a service going down while
    # the listener reconnects to it could hold the sidecar's shutdown. The
    # service is stopped after the sidecar, by cleanup.
    setsid podman system service --time=0 "$podman_url" </dev/null >&2 &
    podman_pid=$!
    say "started the Podman API service on $podman_url (pid $podman_pid)"
fi

shown_addr=$addr
if [[ $addr == 0.0.0.0 || $addr == "::" || $addr == "" ]]; then
    shown_addr=localhost
fi
echo "shieldaudit: trails in $root (shieldaudit ls; shieldaudit show NAME)," \
    "metrics at http://$shown_addr:$port/metrics"
echo "shieldaudit: the agent runs in the foreground; Ctrl-C stops it (the hooks stay installed)"

# In the background and waited for, not exec'd: the script decides its exit
# status (0 on Ctrl-C, so `make run` ends without an error) and stops the
# Podman service it started. A background job ignores SIGINT; it gets SIGTERM.
"$shieldaudit" sidecar "$@" &
sidecar_pid=$!
status=
trap 'status=0; kill -TERM "$sidecar_pid" 2>/dev/null || true' INT
trap 'status=143; kill -TERM "$sidecar_pid" 2>/dev/null || true' TERM
result=0
wait "$sidecar_pid" || result=$?
# A signal interrupts `wait`; poll until the sidecar has finished flushing,
# bounded: after 30 s it is killed (its checkpoint is safe against SIGKILL).
polls=0
while kill -0 "$sidecar_pid" 2>/dev/null; do
    if ((++polls > 150)); then
        say "the sidecar did not stop within 30 s; killing it"
        kill -KILL "$sidecar_pid" 2>/dev/null || true
    fi
    sleep 0.2
done
wait "$sidecar_pid" 2>/dev/null || true
exit "${status:-$result}"
