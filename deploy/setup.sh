#!/usr/bin/env bash
# Set up a fresh Debian 12 host (run as root) for reconciler: Docker engine, the Debian packages
# the images and tests need, a virtualenv with the package, and the local images.
# Idempotent: every step is skipped when already done. Works from any directory.
#   deploy/setup.sh [--no-venv] [--force-images]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=1
IMAGE_ARGS=()

for arg in "$@"; do
    case $arg in
        --no-venv) VENV=0 ;;
        --force-images) IMAGE_ARGS+=(--force) ;;
        -h|--help)
            sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
            exit 0 ;;
        *) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
    esac
done

log() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

SUDO=
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run as root (or install sudo)"
    SUDO=sudo
fi

APT_UPDATED=0
apt_install() { # packages...
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    # Keep package scripts from starting services (e.g. a host nginx on :80); this script
    # starts dockerd itself.
    local policy=/usr/sbin/policy-rc.d added=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 0755 "$policy"
        added=1
    fi
    local rc=0
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >/tmp/reconciler-apt.log 2>&1 || rc=$?
    [ "$added" = 0 ] || $SUDO rm -f "$policy"
    if [ "$rc" -ne 0 ]; then
        tail -n 20 /tmp/reconciler-apt.log >&2
        die "apt-get install $* failed (full log: /tmp/reconciler-apt.log)"
    fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed'; }

# 1. Docker engine -------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    log "docker engine answers"
else
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        apt_install docker.io
    fi
    if docker info >/dev/null 2>&1; then
        log "docker engine answers"
    else
        DOCKERD_LOG=/var/log/reconciler-dockerd.log
        touch "$DOCKERD_LOG" 2>/dev/null || DOCKERD_LOG=/tmp/reconciler-dockerd.log
        log "starting dockerd in the background (log: $DOCKERD_LOG)"
        $SUDO nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
        for _ in $(seq 120); do
            docker info >/dev/null 2>&1 && break
            sleep 0.5
        done
        docker info >/dev/null 2>&1 \
            || die "dockerd did not answer within 60 s; see $DOCKERD_LOG: $(tail -n 5 "$DOCKERD_LOG")"
        log "docker engine answers"
    fi
fi

# 2. Debian packages -----------------------------------------------------------------------
# busybox-static: the small images; nginx: the edge image's binary; prometheus: promtool and
# prometheus in tests; docker-compose: the benchmark comparison; git: spec checkouts;
# postgresql-15, redis-tools: the real postgres and redis images of the rehearsal
# (deploy/rehearsal/build.sh); docker-registry + apache2-utils (htpasswd): the
# private-registry credentials test; iproute2 (ip netns, veth): the two-node swarm lab
# (deploy/swarm-lab.sh, tests/e2e/test_swarm.py).
missing=()
for pkg in busybox-static nginx prometheus docker-compose git python3-venv postgresql-15 redis-tools docker-registry apache2-utils iproute2; do
    installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
else
    log "debian packages present"
fi
# The edge image only needs the nginx binary; a host nginx would hold port 80.
if pgrep -x nginx >/dev/null 2>&1; then
    log "note: a host nginx is running; reconciler does not need it (it may hold port 80)"
fi

# 3. Virtualenv ----------------------------------------------------------------------------
if [ "$VENV" = 1 ]; then
    [ -f "$ROOT/pyproject.toml" ] || die "$ROOT/pyproject.toml missing (use --no-venv to skip)"
    if [ ! -x "$ROOT/.venv/bin/python" ]; then
        log "creating $ROOT/.venv"
        python3 -m venv "$ROOT/.venv"
    fi
    log "pip install -e '.[test]' into .venv"
    (cd "$ROOT" && "$ROOT/.venv/bin/python" -m pip install -q -e '.[test]')
else
    log "skipping the virtualenv (--no-venv)"
fi

# 4. Demo env files: git does not keep file modes, and strict validation wants 0600 -----------
chmod 600 "$ROOT"/deploy/demo/env/*.env

# 5. Images --------------------------------------------------------------------------------
"$ROOT/deploy/demo/images/build.sh" "${IMAGE_ARGS[@]}"

log "done"
