#!/usr/bin/env bash
# Benchmarks against nginx answering a fixed chat completion on loopback, as the issues
# measured: the server then costs little and is not in our process. Runs:
#   1. wrk: the server's own limit (a plain load generator, concurrency 64),
#   2. the LLM client bench (ours vs reqwest vs bare hyper-util vs fresh connections),
#   3. the end-to-end bench (`reasonq batch` vs the bare pool).
# Installs nginx and wrk from Debian's packages when missing. Bounded: a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
. benches/nginx_up.sh
trap nginx_down EXIT
nginx_up
base=$NGINX_BASE
cat > "$NGINX_DIR/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"grok-4","messages":[{"role":"user","content":"What is 2 + 2? Answer briefly."}],"temperature":0}'
LUA
echo "== wrk (server limit), 1 thread, 64 connections, 10 s"
wrk -t1 -c64 -d10s -s "$NGINX_DIR/post.lua" "$base/chat/completions"
echo "== LLM client bench against nginx"
LLM_BENCH_URL="$base" cargo bench --bench llm_client
echo "== end-to-end bench against nginx"
E2E_BASE_URL="$base" cargo bench --bench e2e
