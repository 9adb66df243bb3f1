#!/usr/bin/env bash
# A real two-node Docker Swarm on ONE machine, for the tests and for trying `--engine swarm`:
#   deploy/swarm-lab.sh up      two extra dockerds (manager + worker), swarm init + join, images
#   deploy/swarm-lab.sh down    leave, stop both dockerds, delete namespaces and data (idempotent,
#                               also after a crashed run)
#   deploy/swarm-lab.sh status  nodes and sockets;   deploy/swarm-lab.sh env   the lab's variables
# Then: export DOCKER_HOST=unix:///run/reconciler-swarm/manager.sock; reconciler apply --engine swarm
#
# Layout (NAME=reconciler-swarm, NET=10.213 by default; SWARM_LAB_NAME / SWARM_LAB_NET override.
# Labs with different names coexist; the addresses exist only inside a lab's own namespaces, so
# two labs may use the same NET):
#   network namespaces NAME-manager (NET.0.1) and NAME-worker (NET.0.2), joined by one veth pair
#     (no bridge in the host namespace: the host dockerd's FORWARD policy never sees the traffic)
#   dockerd per node: own UTS name (the node's hostname), --data-root /var/lib/NAME/<node>,
#     --exec-root and pidfile under /run/NAME/<node>, socket /run/NAME/<node>.sock,
#     --bip NET.1.1/24 | NET.2.1/24, local pools NET.64.0/18, overlay pool NET.128.0/17
#   images: SWARM_LAB_IMAGES (default: the demo's reconciler-demo/app and nginx) are saved once
#     and loaded into both nodes; there is no registry.
# Nothing in the host's network namespace changes, and the host's own dockerd is never touched.
# Published ports live in a node's namespace: `ip netns exec NAME-manager curl 127.0.0.1:8088/`.
#
# What this kernel/engine gives (Debian docker.io 20.10, measured on the CI machine):
#   - `ip netns exec` remounts /sys, hiding the cgroup mounts: they are mounted again inside the
#     node's mount namespace, as pid 1 has them, before dockerd starts (tested with the cgroup v1
#     + unified layout here).
#   - VXLAN is built in (overlay networks between the nodes over the veth: 2377/tcp control,
#     7946/tcp+udp gossip, 4789/udp data) and iptables (nf_tables) works per namespace.
#   - IPVS is not (/proc/net/ip_vs missing, no modules to load): service VIPs and the ingress
#     routing mesh do not answer; use endpoint_mode dnsrr and host-mode published ports.
#   - dockerd logs errors that are harmless here: the missing net.ipv4.vs.* sysctls (IPVS) and
#     "enabling default vlan on bridge br0 failed ... permission denied" (overlay networks work).
#   - No default route in the namespaces: an image lookup in a registry fails at once instead of
#     hanging, and the lab cannot reach anything outside the machine.
set -euo pipefail

NAME=${SWARM_LAB_NAME:-reconciler-swarm}
NET=${SWARM_LAB_NET:-10.213}
IMAGES=${SWARM_LAB_IMAGES:-reconciler-demo/app:1.0 reconciler-demo/app:1.1 reconciler-demo/app:2.0 reconciler-demo/nginx:1.22}
RUN=/run/$NAME
DATA=/var/lib/$NAME
NODES=(manager worker)
START_TIMEOUT=${SWARM_LAB_START_TIMEOUT:-60}
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

# `docker` without -H is the host's engine (the images' source), even after the README's
# `export DOCKER_HOST=...manager.sock`
case ${DOCKER_HOST:-} in *"$RUN/"*) unset DOCKER_HOST ;; esac

log() { echo "[swarm-lab] $*" >&2; }
die() { echo "[swarm-lab] ERROR: $*" >&2; exit 1; }

case $NAME in *[!a-z0-9-]*|'') die "SWARM_LAB_NAME must be [a-z0-9-]+, got '$NAME'" ;; esac
[[ $NET =~ ^[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "SWARM_LAB_NET must be two octets like 10.213, got '$NET'"

netns() { echo "$NAME-$1"; }
sock() { echo "$RUN/$1.sock"; }
addr() { case $1 in manager) echo "$NET.0.1" ;; worker) echo "$NET.0.2" ;; esac; }
bip() { case $1 in manager) echo "$NET.1.1/24" ;; worker) echo "$NET.2.1/24" ;; esac; }
dk() { local node=$1; shift; docker -H "unix://$(sock "$node")" "$@"; }
answers() { [ -S "$(sock "$1")" ] && timeout 10 docker -H "unix://$(sock "$1")" version >/dev/null 2>&1; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN{printf "%.1f", e-s}'; }

need() {
    [ "$(id -u)" -eq 0 ] || die "run as root (network namespaces and dockerd)"
    local cmd
    for cmd in ip dockerd docker unshare flock timeout; do
        command -v "$cmd" >/dev/null || die "$cmd not found (deploy/setup.sh installs iproute2 and docker.io)"
    done
}

# --- inside a node: runs as `ip netns exec NS unshare --uts -- swarm-lab.sh _dockerd NODE` ----
# `ip netns exec` gave us a private mount namespace with a fresh /sys: mount the cgroup
# hierarchies again, exactly as the host (pid 1) has them, then become dockerd.
_dockerd() {
    local node=$1 src dir type opts rest
    hostname "$NAME-$node"
    mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup 2>/dev/null || true
    while read -r src dir type opts rest; do
        case $dir in /sys/fs/cgroup|/sys/fs/cgroup/*) ;; *) continue ;; esac
        case $type in
            cgroup|cgroup2) mkdir -p "$dir"; mount -t "$type" -o "$opts" "$src" "$dir" ;;
        esac
    done </proc/1/mounts
    printf '{}\n' >"$RUN/$node/daemon.json"
    exec dockerd \
        --config-file "$RUN/$node/daemon.json" \
        --host "unix://$(sock "$node")" \
        --data-root "$DATA/$node" \
        --exec-root "$RUN/$node/exec" \
        --pidfile "$RUN/$node/dockerd.pid" \
        --bip "$(bip "$node")" \
        --default-address-pool "base=$NET.64.0/18,size=24" \
        --cgroup-parent "/$NAME-$node" \
        --log-level warn
}

start_node() {
    local node=$1 ns
    ns=$(netns "$node")
    mkdir -p "$RUN/$node" "$DATA/$node"
    # fd 9 (the lock) is not inherited: the daemon outlives this script
    ip netns exec "$ns" unshare --uts -- bash "$SELF" _dockerd "$node" \
        >"$RUN/$node/dockerd.log" 2>&1 </dev/null 9>&- &
    echo $! >"$RUN/$node/launcher.pid"
}

wait_node() {
    local node=$1 i
    for ((i = 0; i < START_TIMEOUT * 5; i++)); do
        answers "$node" && return 0
        kill -0 "$(cat "$RUN/$node/launcher.pid")" 2>/dev/null \
            || die "dockerd ($node) exited: $(tail -n 5 "$RUN/$node/dockerd.log")"
        sleep 0.2
    done
    die "dockerd ($node) did not answer within ${START_TIMEOUT}s: $(tail -n 5 "$RUN/$node/dockerd.log")"
}

# Save the images once (content-addressed file name) and load them into a node unless the node
# already has every image id.
load_images() {
    local node=$1 tar=$2 want have
    want=$(docker image inspect -f '{{.Id}}' $IMAGES | sort -u)
    have=$(dk "$node" image inspect -f '{{.Id}}' $IMAGES 2>/dev/null | sort -u || true)
    local tags_ok=1 img
    for img in $IMAGES; do
        [ "$(dk "$node" image inspect -f '{{.Id}}' "$img" 2>/dev/null)" = \
          "$(docker image inspect -f '{{.Id}}' "$img")" ] || tags_ok=0
    done
    if [ "$want" = "$have" ] && [ "$tags_ok" = 1 ]; then
        return 0
    fi
    dk "$node" load -q -i "$tar" >/dev/null
}

ensure_images() {
    local t0 tar ids
    t0=$(now)
    # shellcheck disable=SC2086
    docker image inspect $IMAGES >/dev/null 2>&1 \
        || die "missing image(s) on the host among: $IMAGES (run deploy/setup.sh)"
    # shellcheck disable=SC2086
    ids=$(docker image inspect -f '{{.Id}}' $IMAGES | sort -u | sha256sum | cut -c1-16)
    tar=$RUN/images-$ids.tar
    if [ ! -s "$tar" ]; then
        rm -f "$RUN"/images-*.tar
        # shellcheck disable=SC2086
        docker save -o "$tar.tmp" $IMAGES && mv "$tar.tmp" "$tar"
    fi
    load_images manager "$tar" & local p1=$!
    load_images worker "$tar" & local p2=$!
    wait "$p1" || die "loading images into the manager failed"
    wait "$p2" || die "loading images into the worker failed"
    log "images in both nodes ($(du -h "$tar" | cut -f1) saved, $(since "$t0") s): $IMAGES"
}

healthy() {
    answers manager && answers worker || return 1
    [ "$(dk manager node ls -q --filter role=manager 2>/dev/null | wc -l)" -ge 1 ] || return 1
    [ "$(dk manager node ls --format '{{.Status}}' 2>/dev/null | grep -c Ready)" -eq 2 ]
}

write_env() {
    cat >"$RUN/lab.env.tmp" <<EOF
SWARM_LAB_NAME=$NAME
SWARM_LAB_MANAGER_HOST=unix://$(sock manager)
SWARM_LAB_WORKER_HOST=unix://$(sock worker)
SWARM_LAB_MANAGER_NETNS=$(netns manager)
SWARM_LAB_WORKER_NETNS=$(netns worker)
SWARM_LAB_MANAGER_ADDR=$(addr manager)
SWARM_LAB_WORKER_ADDR=$(addr worker)
SWARM_LAB_IPVS=$([ -e /proc/net/ip_vs ] && echo yes || echo no)
EOF
    mv "$RUN/lab.env.tmp" "$RUN/lab.env"
}

up() {
    local t0 ns token
    t0=$(now)
    if healthy; then
        log "already up ($NAME)"
        ensure_images
        write_env
        cat "$RUN/lab.env"
        return 0
    fi
    down_locked quiet
    mkdir -p "$RUN" "$DATA"
    # the namespaces and the veth pair between them
    for node in "${NODES[@]}"; do
        ns=$(netns "$node")
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip link add lab0 netns "$(netns manager)" type veth peer name lab0 netns "$(netns worker)"
    for node in "${NODES[@]}"; do
        ns=$(netns "$node")
        ip -n "$ns" addr add "$(addr "$node")/24" dev lab0
        ip -n "$ns" link set lab0 up
    done
    for node in "${NODES[@]}"; do start_node "$node"; done
    for node in "${NODES[@]}"; do wait_node "$node"; done
    log "dockerds answer ($(since "$t0") s)"
    dk manager swarm init --advertise-addr "$(addr manager)" --listen-addr "$(addr manager):2377" \
        --default-addr-pool "$NET.128.0/17" --default-addr-pool-mask-length 24 >/dev/null
    token=$(dk manager swarm join-token -q worker)
    dk worker swarm join --token "$token" --advertise-addr "$(addr worker)" \
        --listen-addr "$(addr worker):2377" "$(addr manager):2377" >/dev/null
    local i
    for ((i = 0; i < START_TIMEOUT * 5; i++)); do
        healthy && break
        sleep 0.2
    done
    healthy || die "the worker did not become Ready: $(dk manager node ls 2>&1)"
    log "swarm: 2 nodes Ready ($(since "$t0") s)"
    ensure_images
    write_env
    cat "$RUN/lab.env"
    log "up in $(since "$t0") s; use: export DOCKER_HOST=unix://$(sock manager)"
}

# Stop both nodes' dockerds (in parallel: each takes about 2.5 s) and whatever they left
# (containerd, shims, containers), by pid.
stop_nodes() {
    local node pid i alive
    for node in "${NODES[@]}"; do
        pid=$(cat "$RUN/$node/dockerd.pid" 2>/dev/null || true)
        [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 100; i++)); do
        alive=0
        for node in "${NODES[@]}"; do
            pid=$(cat "$RUN/$node/dockerd.pid" 2>/dev/null || true)
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for node in "${NODES[@]}"; do
        pid=$(cat "$RUN/$node/dockerd.pid" 2>/dev/null || true)
        [ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null || true
        stop_leftovers "$node"
    done
}

stop_leftovers() {
    local node=$1 ns i pids cg
    ns=$(netns "$node")
    # leftovers after a crash: every process in the node's cgroups (containers) and network
    # namespace (containerd, shims, host-network containers)
    for cg in /sys/fs/cgroup/*/"$NAME-$node" /sys/fs/cgroup/"$NAME-$node" \
              /sys/fs/cgroup/unified/"$NAME-$node"; do
        [ -d "$cg" ] || continue
        pids=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    done
    if ip netns list | grep -qw "^$ns"; then
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
    local launcher
    launcher=$(cat "$RUN/$node/launcher.pid" 2>/dev/null || true)
    [ -z "$launcher" ] || kill -KILL "$launcher" 2>/dev/null || true
    # empty cgroups can be removed once their processes are gone (deepest first)
    for ((i = 0; i < 25; i++)); do
        local left=0
        for cg in /sys/fs/cgroup/*/"$NAME-$node" /sys/fs/cgroup/"$NAME-$node"; do
            [ -d "$cg" ] || continue
            find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [ -d "$cg" ] && left=1
        done
        [ "$left" = 0 ] && break
        sleep 0.2
    done
}

down_locked() {
    local quiet=${1:-} node ns t0
    t0=$(now)
    # leave the swarm while both daemons still answer (worker first), then stop them
    if answers worker; then timeout 20 docker -H "unix://$(sock worker)" swarm leave --force >/dev/null 2>&1 || true; fi
    if answers manager; then timeout 20 docker -H "unix://$(sock manager)" swarm leave --force >/dev/null 2>&1 || true; fi
    stop_nodes
    for node in "${NODES[@]}"; do
        ns=$(netns "$node")
        if ip netns list | grep -qw "^$ns"; then ip netns del "$ns" || true; fi
    done
    # mounts stay in the nodes' own mount namespaces, which ended with their processes; a mount
    # left in the host namespace (a dockerd started another way) would block the removal
    grep -E " ($DATA|$RUN)[/ ]" /proc/self/mounts | awk '{print $2}' | sort -r \
        | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$DATA" "$RUN"
    [ -n "$quiet" ] || log "down ($NAME) in $(since "$t0") s"
}

status() {
    local node
    for node in "${NODES[@]}"; do
        if answers "$node"; then
            echo "$node: unix://$(sock "$node") answers (netns $(netns "$node"), $(addr "$node"))"
        else
            echo "$node: not running"
        fi
    done
    answers manager && dk manager node ls || true
    echo "ipvs: $([ -e /proc/net/ip_vs ] && echo present || echo 'missing (no VIPs, no ingress mesh)')"
}

locked() {
    mkdir -p /run
    exec 9>"/run/$NAME.lock"
    flock -w 300 9 || die "another swarm-lab.sh holds /run/$NAME.lock"
    "$@"
}

case ${1:-} in
    up) need; locked up ;;
    down) need; locked down_locked ;;
    status) status ;;
    env) cat "$RUN/lab.env" 2>/dev/null || die "not up ($NAME)" ;;
    _dockerd) _dockerd "$2" ;;
    -h|--help|'') sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ] ;;
    *) die "unknown command '$1' (up|down|status|env)" ;;
esac
