#!/usr/bin/env bash
# Images for the rehearsal of specs/ (`make rehearsal`, tests/rehearsal.py), built locally
# under the PRODUCTION image names, from Debian packages -- no registry:
#   postgres=IMAGE     Debian's postgresql-15 server + client binaries (psql, pg_dump,
#                      pg_restore: the roles job and the backup hooks), their libraries, busybox
#   redis=IMAGE        Debian's redis-server (redis-tools) + redis-cli, their libraries, busybox
#   prometheus=IMAGE   Debian's prometheus binary + web assets, busybox (for the health check)
#   nginx=IMAGE        the demo edge image (Debian's nginx, ../demo/images/build.sh), re-tagged
#   standin=IMAGE,NAME,PORTS
#                      busybox stand-in for what Debian does not package (mongodb, kafka,
#                      grafana, the admin tools, the Metro services): answers HTTP on PORTS
#                      (comma-separated) with the same health checks and URLs (standin/);
#                      kafka-topics.sh (the topics job) and mongodump/mongorestore (the
#                      backup hooks) work against the kafka and mongodb stand-ins (standin/)
# Each image is FROM scratch + a reproducible rootfs.tar, labelled with the content hash; a
# build is skipped when the image already carries that hash (like ../demo/images/build.sh,
# whose helpers this script sources). --force rebuilds anyway.
set -euo pipefail
umask 022
REHEARSAL=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../demo/images/build.sh
source "$REHEARSAL/../demo/images/build.sh"

PG=/usr/lib/postgresql/15
REDIS=/usr/bin/redis-check-rdb   # redis-tools: the server binary (redis-server links to it)
PROMETHEUS=/usr/bin/prometheus

# copy_bin <root> <file...>: the files at their paths plus exactly the libraries ldd lists.
copy_bin() {
    local root=$1 f lib; shift
    for f in "$@"; do
        [ -e "$f" ] || die "$f missing (deploy/setup.sh installs it)"
        install -D -m 0755 "$f" "$root$f"
        if ldd "$f" 2>/dev/null | grep -q 'not found'; then
            die "ldd $f: a library is not found"
        fi
        while read -r lib; do
            [ -e "$root$lib" ] && continue
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done < <(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }')
    done
}

finish() { # <image> <context dir>: the rootfs tar, then build unless the hash is current
    make_tar "$2/root" "$2/rootfs.tar"
    ensure_image "${1%:*}" "$2" "${1##*:}"
}

image_ctx() { # <name>: a fresh context dir with a base rootfs (busybox, passwd) in $ctx/root
    ctx=$WORK/$1
    rm -rf "$ctx"
    mkdir -p "$ctx/root"
    add_base "$ctx/root"
    add_busybox "$ctx/root"
}

build_postgres() {
    local image=$1 f
    image_ctx postgres
    local root=$ctx/root
    echo "postgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh" >>"$root/etc/passwd"
    echo "postgres:x:999:" >>"$root/etc/group"
    copy_bin "$root" "$PG/bin/postgres" "$PG/bin/initdb" "$PG/bin/pg_ctl" "$PG/bin/pg_isready" \
        "$PG/bin/psql" "$PG/bin/pg_dump" "$PG/bin/pg_restore"
    for f in "$PG"/lib/*.so; do
        case $f in */llvmjit*) continue ;; esac   # JIT: off without it
        copy_bin "$root" "$f"
    done
    mkdir -p "$root/usr/share/postgresql"
    cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
    mkdir -p "$root/usr/share/zoneinfo/Etc"
    cp -L /usr/share/zoneinfo/UTC "$root/usr/share/zoneinfo/UTC"
    cp -L /usr/share/zoneinfo/Etc/UTC "$root/usr/share/zoneinfo/Etc/UTC"
    install -D -m 0755 "$REHEARSAL/postgres/entrypoint" "$root/usr/local/bin/docker-entrypoint.sh"
    mkdir -p "$root/var/lib/postgresql/data" "$root/run/postgresql"
    ln -s /run "$root/var/run"   # the socket directory Debian compiled in: /var/run/postgresql
    cat >"$ctx/Dockerfile" <<DOCKERFILE
# Rehearsal stand-in for $image: Debian's PostgreSQL 15 (deploy/rehearsal/build.sh).
FROM scratch
ADD rootfs.tar /
ENV PATH=$PG/bin:/usr/local/bin:/bin TZ=UTC PGDATA=/var/lib/postgresql/data
HEALTHCHECK NONE
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
DOCKERFILE
    finish "$image" "$ctx"
}

build_redis() {
    local image=$1
    image_ctx redis
    local root=$ctx/root
    copy_bin "$root" "$REDIS" /usr/bin/redis-cli
    mv "$root$REDIS" "$root/usr/bin/redis-server"
    mkdir -p "$root/data"
    cat >"$ctx/Dockerfile" <<DOCKERFILE
# Rehearsal stand-in for $image: Debian's redis-server 7 (deploy/rehearsal/build.sh).
FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/bin:/bin
WORKDIR /data
HEALTHCHECK NONE
CMD ["redis-server"]
DOCKERFILE
    finish "$image" "$ctx"
}

build_prometheus() {
    local image=$1
    image_ctx prometheus
    local root=$ctx/root
    copy_bin "$root" "$PROMETHEUS"
    mkdir -p "$root/usr/share/prometheus" "$root/prometheus" "$root/etc/prometheus"
    cp -a /usr/share/prometheus/web "$root/usr/share/prometheus/"
    cat >"$ctx/Dockerfile" <<DOCKERFILE
# Rehearsal stand-in for $image: Debian's Prometheus 2 (deploy/rehearsal/build.sh).
FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/bin:/bin
WORKDIR /prometheus
HEALTHCHECK NONE
ENTRYPOINT ["$PROMETHEUS"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
DOCKERFILE
    finish "$image" "$ctx"
}

build_nginx() {
    local image=$1 demo=reconciler-demo/nginx:1.22
    bash "$REHEARSAL/../demo/images/build.sh" nginx
    if [ "$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null)" != \
            "$(docker image inspect -f '{{.Id}}' "$demo")" ]; then
        log "tag $demo -> $image"
        docker tag "$demo" "$image"
    else
        log "$image up to date (= $demo)"
    fi
}

STANDIN_DONE=
build_standin() { # IMAGE,NAME,PORTS
    local image name ports
    IFS=, read -r image name ports <<<"$1"
    ports=${ports//;/ }
    if [ -z "$STANDIN_DONE" ]; then
        image_ctx standin
        mkdir -p "$ctx/root/standin" "$ctx/root/opt/kafka/bin" "$ctx/root/usr/local/bin"
        install -m 0755 "$REHEARSAL/standin/entrypoint" "$REHEARSAL/standin/handler" "$ctx/root/standin/"
        install -m 0755 "$REHEARSAL/standin/probe" "$REHEARSAL/standin/kafka-topics" \
            "$REHEARSAL/standin/mongotools" "$ctx/root/standin/"
        ln -s /standin/probe "$ctx/root/opt/kafka/bin/kafka-broker-api-versions.sh"
        ln -s /standin/kafka-topics "$ctx/root/opt/kafka/bin/kafka-topics.sh"
        ln -s /standin/mongotools "$ctx/root/usr/local/bin/mongodump"
        ln -s /standin/mongotools "$ctx/root/usr/local/bin/mongorestore"
        ln -s /standin/probe "$ctx/root/usr/local/bin/mongosh"
        ln -s /standin/probe "$ctx/root/usr/local/bin/node"
        make_tar "$ctx/root" "$WORK/standin-rootfs.tar"
        STANDIN_DONE=1
    fi
    local sctx=$WORK/standin-$name
    rm -rf "$sctx"; mkdir -p "$sctx"
    cp "$WORK/standin-rootfs.tar" "$sctx/rootfs.tar"
    cat >"$sctx/Dockerfile" <<DOCKERFILE
# Rehearsal stand-in for $image ($name): busybox HTTP on $ports (deploy/rehearsal/standin).
FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/local/bin:/bin STANDIN_NAME=$name STANDIN_PORTS="$ports"
HEALTHCHECK NONE
STOPSIGNAL SIGTERM
ENTRYPOINT ["/standin/entrypoint"]
DOCKERFILE
    ensure_image "${image%:*}" "$sctx" "${image##*:}"
}

[ $# -gt 0 ] || { echo "usage: $0 [--force] KIND=IMAGE[,NAME,PORTS] ..." >&2; exit 2; }
for arg in "$@"; do
    case $arg in
        --force) FORCE=1 ;;
        postgres=*|redis=*|prometheus=*|nginx=*|standin=*) "build_${arg%%=*}" "${arg#*=}" ;;
        *) die "unknown argument $arg" ;;
    esac
done
