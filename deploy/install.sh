#!/usr/bin/env bash
# Install reconciler on a production host (Debian/Ubuntu, run as root) and start it under
# systemd. Idempotent: every step checks first and is skipped when already done.
#
#   deploy/install.sh [--dry-run] [--branch BRANCH] [--package SPEC] SPEC_REPO_URL
#
#   --dry-run      print every step and change nothing (no root needed)
#   --branch       branch of the spec repository to follow (default: main)
#   --package      what pip installs into the venv (default: this checkout of reconciler)
#
# Result: Docker engine (docker.io when no engine is installed), /opt/reconciler/venv with the
# package, /var/lib/reconciler (state, 0700), /opt/env/metro (the stack's env files, 0700,
# files 0600; /opt/env is the host policy's default `env_file_roots`), the edge's secrets
# volume with a basic-auth user for /grafana/, /prometheus/ and the admin tools, the spec
# repository checked out at /srv/metro-spec, and reconciler.service enabled and started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/reconciler
VENV=$PREFIX/venv
STATE_DIR=/var/lib/reconciler
ENV_ROOT=/opt/env
ENV_DIR=$ENV_ROOT/metro
EDGE_VOLUME=metro_edge_secrets   # specs/00-project.yaml: volumes.edge-secrets
EDGE_USER=ops
SPEC_CHECKOUT=/srv/metro-spec
UNIT_SRC=$ROOT/deploy/reconciler.service
UNIT_DST=/etc/systemd/system/reconciler.service

DRY_RUN=0
BRANCH=main
PACKAGE=$ROOT
SPEC_REPO=

usage() { echo "usage:" >&2; sed -n '5,9p' "$0" | sed 's/^# \{0,1\}//' >&2; }

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --branch) BRANCH=${2:?--branch needs a value}; shift ;;
        --package) PACKAGE=${2:?--package needs a value}; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "unknown option: $1" >&2; usage; exit 2 ;;
        *) [ -z "$SPEC_REPO" ] || { echo "one spec repository only" >&2; exit 2; }
           SPEC_REPO=$1 ;;
    esac
    shift
done
[ -n "$SPEC_REPO" ] || { echo "missing SPEC_REPO_URL" >&2; usage; exit 2; }

step() { echo "==> $*"; }
# run CMD...: executes it, or with --dry-run only prints it
run() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "[dry-run] $*"
    else
        echo "+ $*"
        "$@"
    fi
}
skip() {
    if [ "$DRY_RUN" = 1 ]; then echo "[dry-run] skip: $*"; else echo "    ok: $*"; fi
}

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "run as root (or try --dry-run)" >&2
    exit 1
fi

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        run apt-get update -qq
        APT_UPDATED=1
    fi
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

step "Docker engine"
if command -v dockerd >/dev/null 2>&1 || command -v docker >/dev/null 2>&1; then
    skip "docker is installed ($(command -v dockerd || command -v docker))"
else
    apt_install docker.io
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if systemctl is-enabled --quiet docker.service 2>/dev/null \
            && systemctl is-active --quiet docker.service 2>/dev/null; then
        skip "docker.service is enabled and running"
    else
        run systemctl enable --now docker.service
    fi
else
    skip "no systemd here: start dockerd yourself"
fi

step "Tools: git, python3-venv"
missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
else
    skip "git and python3-venv are installed"
fi

step "Virtualenv $VENV with reconciler"
if [ -x "$VENV/bin/python" ]; then
    skip "$VENV exists"
else
    run install -d -m 0755 "$PREFIX"
    run python3 -m venv "$VENV"
fi
run "$VENV/bin/pip" install --quiet --upgrade "$PACKAGE"

step "State dir $STATE_DIR and env dir $ENV_DIR (0700, env files 0600)"
for dir in "$STATE_DIR" "$ENV_ROOT" "$ENV_DIR"; do
    if [ -d "$dir" ] && [ "$(stat -c %a "$dir")" = 700 ]; then
        skip "$dir exists with mode 0700"
    else
        run install -d -m 0700 -o root -g root "$dir"
    fi
done
if [ -d "$ENV_DIR" ] && [ -n "$(find "$ENV_DIR" -type f ! -perm 0600 -print -quit 2>/dev/null)" ]
then
    run find "$ENV_DIR" -type f ! -perm 0600 -exec chmod 0600 {} +
else
    skip "env files are 0600 (put one <service>.env per service into $ENV_DIR)"
fi

step "Edge secrets: basic-auth user '$EDGE_USER' for the monitoring and admin paths"
# nginx reads /etc/nginx/secrets/monitoring.htpasswd (the $EDGE_VOLUME volume). The password
# is generated once and kept in $ENV_DIR/edge-monitoring.password (0600); add users with
# `openssl passwd -6` lines of your own. TLS: put fullchain.pem, privkey.pem and a tls.conf
# (`listen 443 ssl reuseport; ssl_certificate /etc/nginx/secrets/fullchain.pem; ...`) into the volume.
if [ "$DRY_RUN" = 1 ]; then
    echo "[dry-run] docker volume create $EDGE_VOLUME; write monitoring.htpasswd into it"
elif docker volume inspect "$EDGE_VOLUME" >/dev/null 2>&1 && [ -s "$(docker volume inspect \
        -f '{{.Mountpoint}}' "$EDGE_VOLUME")/monitoring.htpasswd" ]; then
    skip "$EDGE_VOLUME has monitoring.htpasswd"
else
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    run docker volume create "$EDGE_VOLUME" >/dev/null
    secret=$ENV_DIR/edge-monitoring.password
    [ -s "$secret" ] || (umask 077; openssl rand -base64 24 >"$secret")
    hash=$(openssl passwd -6 -stdin <"$secret")
    mountpoint=$(docker volume inspect -f '{{.Mountpoint}}' "$EDGE_VOLUME")
    printf '%s:%s\n' "$EDGE_USER" "$hash" >"$mountpoint/monitoring.htpasswd"
    chmod 0644 "$mountpoint/monitoring.htpasswd"   # nginx's workers read it
    echo "    user $EDGE_USER, password in $secret"
fi

step "Spec repository $SPEC_REPO ($BRANCH) at $SPEC_CHECKOUT"
if [ -d "$SPEC_CHECKOUT/.git" ]; then
    run git -C "$SPEC_CHECKOUT" fetch --quiet origin "$BRANCH"
    run git -C "$SPEC_CHECKOUT" checkout --quiet "$BRANCH"
    run git -C "$SPEC_CHECKOUT" pull --ff-only --quiet origin "$BRANCH"
else
    [ -d "$(dirname "$SPEC_CHECKOUT")" ] || run install -d -m 0755 "$(dirname "$SPEC_CHECKOUT")"
    run git clone --quiet --branch "$BRANCH" "$SPEC_REPO" "$SPEC_CHECKOUT"
fi

step "Check the spec before the controller starts"
if [ "$DRY_RUN" = 1 ]; then
    echo "[dry-run] $VENV/bin/reconciler validate --spec $SPEC_CHECKOUT/specs"
elif ! "$VENV/bin/reconciler" validate --spec "$SPEC_CHECKOUT/specs"; then
    echo "warning: the spec does not validate yet; the controller keeps the host as it is" \
         "and reports it until a valid spec is pulled" >&2
fi

step "systemd unit $UNIT_DST"
if [ -f "$UNIT_DST" ] && cmp -s "$UNIT_SRC" "$UNIT_DST"; then
    skip "$UNIT_DST is current"
else
    run install -m 0644 "$UNIT_SRC" "$UNIT_DST"
    run systemctl daemon-reload
fi
if [ "$DRY_RUN" = 0 ] && systemctl is-enabled --quiet reconciler.service 2>/dev/null; then
    run systemctl restart reconciler.service
else
    run systemctl enable --now reconciler.service
fi

step "Done"
echo "Follow it:  journalctl -u reconciler -f"
echo "Preview:    $VENV/bin/reconciler --dry-run --spec $SPEC_CHECKOUT/specs"
echo "Metrics:    curl -s http://172.17.0.1:9321/metrics | grep ^reconciler_"
echo "Stack:      curl -s http://localhost/health   (Grafana: /grafana/, Prometheus: /prometheus/)"
