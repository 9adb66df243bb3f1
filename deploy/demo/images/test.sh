#!/usr/bin/env bash
# Smoke test of the images built by build.sh on the local dockerd. Uses only containers and a
# network named imgtest-* (removed afterwards); traffic goes only to those containers.
set -euo pipefail

P=imgtest-$$
APP=reconciler-demo/app:1.0
NGINX=reconciler-demo/nginx:1.22
FAILS=0
TMP=$(mktemp -d /tmp/imgtest.XXXXXX)

cleanup() {
    docker ps -aq --filter "name=$P-" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network rm "$P-net" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT

ok()   { echo "  ok   $*"; }
bad()  { echo "  FAIL $*"; FAILS=$((FAILS + 1)); }
check() { # description expected actual
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: expected [$2] got [$3]"; fi
}
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$P-net\").IPAddress}}" "$1"; }
# curl_ <container> <path> [port]: prints "<code> <content-type> <body>"
curl_() {
    curl -s --max-time 5 -o "$TMP/body" -w '%{http_code} %{content_type}' \
        "http://$(ip_of "$1"):${3:-8080}$2" >"$TMP/meta" || true
    echo "$(cat "$TMP/meta") $(cat "$TMP/body")"
}
wait_port() { # container [port]
    local i
    for i in $(seq 50); do
        curl -s --max-time 1 -o /dev/null "http://$(ip_of "$1"):${2:-8080}/" && return 0
        sleep 0.1
    done
    return 1
}
run() { # name args...
    local n=$1; shift
    docker run -d --name "$P-$n" --network "$P-net" "$@" >/dev/null
}

docker network create "$P-net" >/dev/null

echo "app: endpoints"
run a1 -e APP_NAME=orders -e APP_VERSION=1.1 "$APP"
wait_port "$P-a1"
host=$(docker inspect -f '{{.Config.Hostname}}' "$P-a1")
check "GET /health" "200 text/plain ok" "$(curl_ "$P-a1" /health)"
check "GET /" "200 application/json {\"service\":\"orders\",\"version\":\"1.1\",\"host\":\"$host\"}" \
    "$(curl_ "$P-a1" /)"
check "GET /v1/orders/42?x=1" "200 application/json {\"service\":\"orders\",\"version\":\"1.1\",\"host\":\"$host\"}" \
    "$(curl_ "$P-a1" '/v1/orders/42?x=1')"
check "GET /status/500" "500 application/json {\"service\":\"orders\",\"error\":\"app status 500\"}" \
    "$(curl_ "$P-a1" /status/500)"
check "HEAD /health" "200 0" \
    "$(curl -s -I --max-time 5 -o /dev/null -w '%{http_code} %{size_download}' "http://$(ip_of "$P-a1"):8080/health")"
check "GET /nope" "404 text/plain not found" "$(curl_ "$P-a1" /nope)"
check "wget inside" "ok" "$(docker exec "$P-a1" wget -qO- http://127.0.0.1:8080/health)"

echo "app: concurrency (600 requests, 60 in parallel)"
ip=$(ip_of "$P-a1")
start=$(date +%s.%N)
seq 600 | xargs -P 60 -I{} curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 10 \
    "http://$ip:8080/v1/{}" >"$TMP/load"
dur=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.2f", e-s}')
check "all 200" "600" "$(grep -c '^200 ' "$TMP/load")"
check "none slower than 0.9 s" "0" "$(awk '$2 > 0.9' "$TMP/load" | wc -l)"
echo "       ($dur s, slowest $(sort -k2 -n "$TMP/load" | tail -1 | cut -d' ' -f2) s)"

echo "app: docker stop is prompt"
start=$(date +%s.%N)
docker stop "$P-a1" >/dev/null
dur=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{print (e-s < 2) ? "fast" : "slow " e-s}')
check "docker stop < 2 s" "fast" "$dur"
check "exit code after stop" "0" "$(docker inspect -f '{{.State.ExitCode}}' "$P-a1")"

echo "app: HEALTH_DELAY=3 and a healthcheck"
run a2 -e HEALTH_DELAY=3 --health-cmd 'wget -qO- http://127.0.0.1:8080/health' \
    --health-interval 1s --health-retries 1 "$APP"
wait_port "$P-a2"
check "early /health" "503 text/plain starting" "$(curl_ "$P-a2" /health)"
sleep 3.5
check "late /health" "200 text/plain ok" "$(curl_ "$P-a2" /health)"
sleep 1.5
check "docker health" "healthy" "$(docker inspect -f '{{.State.Health.Status}}' "$P-a2")"

echo "app: NEVER_HEALTHY=1"
run a3 -e NEVER_HEALTHY=1 --health-cmd 'wget -qO- http://127.0.0.1:8080/health' \
    --health-interval 1s --health-retries 1 "$APP"
wait_port "$P-a3"
check "/health" "503 text/plain unhealthy" "$(curl_ "$P-a3" /health)"
sleep 2.5
check "docker health" "unhealthy" "$(docker inspect -f '{{.State.Health.Status}}' "$P-a3")"

echo "app: APP_PORT=9090"
run a4 -e APP_PORT=9090 "$APP"
wait_port "$P-a4" 9090
check "/health on 9090" "200 text/plain ok" "$(curl_ "$P-a4" /health 9090)"

echo "app: CRASH_AFTER=2, EXIT_IMMEDIATELY=1"
run a5 -e CRASH_AFTER=2 "$APP"
run a6 -e EXIT_IMMEDIATELY=1 "$APP"
wait_port "$P-a5"
check "serving before the crash" "200 text/plain ok" "$(curl_ "$P-a5" /health)"
sleep 1
check "EXIT_IMMEDIATELY exit code" "exited 1" "$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$P-a6")"
sleep 1.5
check "CRASH_AFTER exit code" "exited 1" "$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$P-a5")"

echo "nginx: default config"
run n1 "$NGINX"
check "exec wget /nginx-health" "ok" \
    "$(sleep 0.5; docker exec "$P-n1" wget -qO- http://127.0.0.1/nginx-health)"
if docker exec "$P-n1" nginx -t >"$TMP/t" 2>&1; then ok "nginx -t"; else bad "nginx -t: $(cat "$TMP/t")"; fi
docker kill -s HUP "$P-n1" >/dev/null
sleep 0.5
check "serves after HUP" "ok" "$(docker exec "$P-n1" wget -qO- http://127.0.0.1/nginx-health)"
check "running after HUP" "running" "$(docker inspect -f '{{.State.Status}}' "$P-n1")"
docker exec "$P-n1" wget -qO- http://127.0.0.1/some/path >/dev/null 2>&1 || true
sleep 0.3
check "access log on stdout" "1" "$(docker logs "$P-n1" 2>/dev/null | grep -c 'GET /some/path' || true)"

echo "nginx: mounted config + conf.d, proxy to an app, reload after a change"
mkdir -p "$TMP/nginx/conf.d"
cat >"$TMP/nginx/nginx.conf" <<'EOF'
user www-data;
worker_processes 2;
events { worker_connections 512; }
http {
    include /etc/nginx/conf.d/*.conf;
    server {
        listen 80;
        location = /nginx-health { return 200 "ok\n"; }
        location / { proxy_pass http://app; proxy_next_upstream off; }
    }
}
EOF
echo "upstream app { server $P-b1:8080; }" >"$TMP/nginx/conf.d/upstreams.conf"
run b1 -e APP_NAME=blue "$APP"
run b2 -e APP_NAME=green "$APP"
wait_port "$P-b1"; wait_port "$P-b2"
run n2 -v "$TMP/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" -v "$TMP/nginx/conf.d:/etc/nginx/conf.d:ro" "$NGINX"
sleep 0.5
check "proxied /v1/x" "200 application/json blue" \
    "$(curl_ "$P-n2" /v1/x 80 | sed 's/{"service":"\([a-z]*\)".*/\1/')"
check "app 500 passes through" "500 application/json {\"service\":\"blue\",\"error\":\"app status 500\"}" \
    "$(curl_ "$P-n2" /status/500 80)"
echo "upstream app { server $P-b2:8080; }" >"$TMP/nginx/conf.d/upstreams.conf.tmp"
mv "$TMP/nginx/conf.d/upstreams.conf.tmp" "$TMP/nginx/conf.d/upstreams.conf"
if docker exec "$P-n2" nginx -t >"$TMP/t" 2>&1; then ok "nginx -t (mounted)"; else bad "nginx -t: $(cat "$TMP/t")"; fi
docker kill -s HUP "$P-n2" >/dev/null
sleep 1
check "after reload: green" "200 application/json green" \
    "$(curl_ "$P-n2" /v1/x 80 | sed 's/{"service":"\([a-z]*\)".*/\1/')"
check "workers run as www-data" "www-data" \
    "$(docker exec "$P-n2" ps -o user,args | awk '/worker process/ {print $1; exit}')"
start=$(date +%s.%N)
docker stop "$P-n2" >/dev/null
dur=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{print (e-s < 2) ? "fast" : "slow " e-s}')
check "nginx docker stop < 2 s" "fast" "$dur"

echo
if [ "$FAILS" -eq 0 ]; then echo "all image tests passed"; else echo "$FAILS image test(s) FAILED"; exit 1; fi
