#!/usr/bin/env bash
# Benchmarks against nginx answering a fixed chat completion on loopback, as the issues
# measured: the server then costs little and is not in our process. Runs:
#   1. wrk: the server's own limit (a plain load generator, concurrency 64),
#   2. the LLM client bench (ours vs reqwest vs bare hyper-util vs fresh connections),
#   3. the end-to-end bench (`reasonq batch` vs the bare pool).
# Installs nginx and wrk from Debian's packages when missing. Bounded: a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18080}
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi
work=$(mktemp -d)
trap 'nginx -p "$work" -c nginx.conf -s stop 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/logs"
completion='{"id":"chatcmpl-nginx","object":"chat.completion","created":1700000000,"model":"grok-4","choices":[{"index":0,"message":{"role":"assistant","content":"4"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}'
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$PORT;
    location = /v1/chat/completions {
      client_body_buffer_size 64k;
      default_type application/json;
      add_header x-request-id nginx-fixed;
      return 200 '$completion';
    }
    location = /v1/models {
      default_type application/json;
      return 200 '{"object":"list","data":[{"id":"grok-4","object":"model"}]}';
    }
  }
}
CONF
nginx -p "$work" -c nginx.conf
base="http://127.0.0.1:$PORT/v1"
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"grok-4","messages":[{"role":"user","content":"What is 2 + 2? Answer briefly."}],"temperature":0}'
LUA
echo "== wrk (server limit), 1 thread, 64 connections, 10 s"
wrk -t1 -c64 -d10s -s "$work/post.lua" "$base/chat/completions"
echo "== LLM client bench against nginx"
LLM_BENCH_URL="$base" cargo bench --bench llm_client
echo "== end-to-end bench against nginx"
E2E_BASE_URL="$base" cargo bench --bench e2e
