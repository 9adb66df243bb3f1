#!/usr/bin/env bash
# Build the local images of the demo stack and the tests from Debian packages -- no registry:
#   reconciler-demo/app:1.0 (+ :1.1, :2.0, same content)  busybox + a shell HTTP app
#   reconciler-demo/nginx:1.22                            Debian's nginx + its libraries + busybox
# Each image is a `FROM scratch` Dockerfile that ADDs a reproducible rootfs.tar. The image carries
# the label reconciler.build-hash (sha256 of Dockerfile + rootfs.tar); a build is skipped when
# every tag already has that hash. --force rebuilds anyway.
# Needs: docker, busybox-static (/bin/busybox), nginx (/usr/sbin/nginx), GNU tar.
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FORCE=0
ONLY=()

usage() {
    cat <<EOF
usage: $(basename "$0") [--force] [app|nginx ...]
  --force   rebuild even when the images are up to date
  app|nginx build only these images (default: all)
EOF
}

log() { echo "[images] $*"; }
die() { echo "[images] ERROR: $*" >&2; exit 1; }

BUSYBOX=${BUSYBOX:-/bin/busybox}
NGINX=${NGINX:-/usr/sbin/nginx}
APP_REPO=reconciler-demo/app
APP_TAGS=(1.0 1.1 2.0)
NGINX_REPO=reconciler-demo/nginx
NGINX_TAGS=(1.22)

command -v docker >/dev/null || die "docker client not found"
docker info >/dev/null 2>&1 || die "no Docker engine answers (run deploy/setup.sh)"
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: apt-get install busybox-static"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked: apt-get install busybox-static"
fi

WORK=$(mktemp -d /tmp/reconciler-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# busybox as a real file /bin/busybox, every applet a symlink to it (never busybox itself:
# a self-link fails with "too many levels of symbolic links").
add_busybox() {
    local root=$1 applet
    mkdir -p "$root/bin"
    cp "$BUSYBOX" "$root/bin/busybox"
    chmod 0755 "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ "$applet" = busybox ] && continue
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
}

add_base() {
    local root=$1
    mkdir -p "$root/etc" "$root/tmp" "$root/root"
    chmod 1777 "$root/tmp"
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/bin/nologin
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
www-data:x:33:
nogroup:x:65534:
nobody:x:65534:
EOF
    cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
}

# Reproducible tar: sorted names, fixed mtimes, numeric owners.
make_tar() {
    tar --sort=name --mtime=@0 --numeric-owner --format=gnu -C "$1" -cf "$2" .
}

label_of() {
    docker image inspect -f '{{index .Config.Labels "reconciler.build-hash"}}' "$1" 2>/dev/null || true
}

# ensure_image <repo> <context dir> <tag...>: build unless every tag carries the context's hash.
ensure_image() {
    local repo=$1 ctx=$2; shift 2
    local tags=("$@") hash t stale=() args=() start
    hash=$(cd "$ctx" && sha256sum Dockerfile rootfs.tar | sha256sum | cut -c1-64)
    for t in "${tags[@]}"; do
        [ "$(label_of "$repo:$t")" = "$hash" ] || stale+=("$t")
    done
    if [ "$FORCE" = 0 ] && [ ${#stale[@]} -eq 0 ]; then
        log "$repo:{$(IFS=,; echo "${tags[*]}")} up to date (${hash:0:12})"
        return
    fi
    if [ "$FORCE" = 0 ] && [ ${#stale[@]} -lt ${#tags[@]} ]; then
        # Some tag has the right content: re-point the others at it.
        for t in "${tags[@]}"; do
            [ "$(label_of "$repo:$t")" = "$hash" ] && break
        done
        for s in "${stale[@]}"; do
            log "tag $repo:$t -> $repo:$s"
            docker tag "$repo:$t" "$repo:$s"
        done
        return
    fi
    for t in "${tags[@]}"; do args+=(-t "$repo:$t"); done
    [ "$FORCE" = 0 ] || args+=(--no-cache)
    # Images these tags pointed to before; removed below if the build leaves them untagged.
    local old=()
    for t in "${tags[@]}"; do
        old+=("$(docker image inspect -f '{{.Id}}' "$repo:$t" 2>/dev/null || true)")
    done
    log "building $repo:{$(IFS=,; echo "${tags[*]}")} (${hash:0:12})"
    start=$(date +%s.%N)
    if ! DOCKER_BUILDKIT=0 docker build --force-rm \
            --label "reconciler.build-hash=$hash" \
            --label "org.opencontainers.image.title=$repo" \
            --label "org.opencontainers.image.source=reconciler deploy/demo/images" \
            "${args[@]}" "$ctx" >"$WORK/build.log" 2>&1; then
        cat "$WORK/build.log" >&2
        die "docker build of $repo failed"
    fi
    local id
    for id in $(printf '%s\n' "${old[@]}" | sort -u); do
        [ -n "$id" ] || continue
        if [ "$(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null)" = 0 ]; then
            docker image rm "$id" >/dev/null 2>&1 || true   # still used by a container: keep
        fi
    done
    log "built $repo in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}') s," \
        "$(docker image inspect -f '{{.Size}}' "$repo:${tags[0]}" | awk '{printf "%.1f MB", $1/1e6}')"
}

build_app() {
    local ctx=$WORK/app root=$WORK/app/root
    mkdir -p "$root/app"
    add_base "$root"
    add_busybox "$root"
    install -m 0755 "$HERE/app/entrypoint" "$HERE/app/handler" "$root/app/"
    cp "$HERE/app/Dockerfile" "$ctx/Dockerfile"
    make_tar "$root" "$ctx/rootfs.tar"
    ensure_image "$APP_REPO" "$ctx" "${APP_TAGS[@]}"
}

build_nginx() {
    local ctx=$WORK/nginx root=$WORK/nginx/root lib f d
    [ -x "$NGINX" ] || die "$NGINX missing: apt-get install nginx"
    mkdir -p "$root"
    add_base "$root"
    add_busybox "$root"
    install -D -m 0755 "$NGINX" "$root/usr/sbin/nginx"
    # Exactly the libraries ldd lists (incl. the dynamic loader), at the paths ldd prints.
    if ldd "$NGINX" | grep -q 'not found'; then
        die "ldd $NGINX: a library is not found"
    fi
    while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(ldd "$NGINX" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }')
    mkdir -p "$root/etc/nginx/conf.d" "$root/etc/nginx/modules-enabled"
    install -m 0644 "$HERE/nginx/nginx.conf" "$root/etc/nginx/nginx.conf"
    for f in mime.types fastcgi.conf fastcgi_params proxy_params scgi_params uwsgi_params; do
        [ -f "/etc/nginx/$f" ] && install -m 0644 "/etc/nginx/$f" "$root/etc/nginx/$f"
    done
    [ -f "$root/etc/nginx/mime.types" ] || die "/etc/nginx/mime.types missing"
    # var/log/nginx/edge: nginx.conf's JSON access log; the reconciler mounts a state-dir
    # directory there (edge metrics), and without the mount (compose, a bare nginx -t) the
    # edge still starts
    mkdir -p "$root/var/log/nginx/edge" "$root/run/lock" "$root/var/lock" \
        "$root/usr/share/nginx/html" "$root/usr/lib/nginx/modules" "$root/var/www"
    ln -s /dev/stdout "$root/var/log/nginx/access.log"
    ln -s /dev/stderr "$root/var/log/nginx/error.log"
    for d in body proxy fastcgi uwsgi scgi; do
        mkdir -p "$root/var/lib/nginx/$d"
        chown 33:33 "$root/var/lib/nginx/$d"
        chmod 0700 "$root/var/lib/nginx/$d"
    done
    cp "$HERE/nginx/Dockerfile" "$ctx/Dockerfile"
    make_tar "$root" "$ctx/rootfs.tar"
    ensure_image "$NGINX_REPO" "$ctx" "${NGINX_TAGS[@]}"
}

main() {
    for arg in "$@"; do
        case $arg in
            --force) FORCE=1 ;;
            -h|--help) usage; exit 0 ;;
            app|nginx) ONLY+=("$arg") ;;
            *) usage >&2; exit 2 ;;
        esac
    done
    [ ${#ONLY[@]} -gt 0 ] || ONLY=(app nginx)
    for img in "${ONLY[@]}"; do
        "build_$img"
    done
}

# Sourced (deploy/rehearsal/build.sh reuses the helpers above): define, do not build.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
