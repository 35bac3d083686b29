# Sourced by the nginx benches: `nginx_up` starts nginx on loopback (port $PORT, default
# 18080) answering a fixed chat completion, in a fresh folder $NGINX_DIR, and sets
# NGINX_BASE to its API base URL; `nginx_down` stops it and removes the folder. Installs
# nginx from Debian's packages when missing.

nginx_up() {
  local port=${PORT:-18080}
  if ! command -v nginx >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  fi
  NGINX_DIR=$(mktemp -d)
  mkdir -p "$NGINX_DIR/logs"
  local completion='{"id":"chatcmpl-nginx","object":"chat.completion","created":1700000000,"model":"grok-4","choices":[{"index":0,"message":{"role":"assistant","content":"4"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}'
  cat > "$NGINX_DIR/nginx.conf" <<CONF
worker_processes 1;
pid $NGINX_DIR/nginx.pid;
error_log $NGINX_DIR/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$port;
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
  nginx -p "$NGINX_DIR" -c nginx.conf
  NGINX_BASE="http://127.0.0.1:$port/v1"
}

nginx_down() {
  if [ -n "${NGINX_DIR:-}" ]; then
    nginx -p "$NGINX_DIR" -c nginx.conf -s stop 2>/dev/null || true
    rm -rf "$NGINX_DIR"
  fi
}
