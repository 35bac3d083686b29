#!/usr/bin/env bash
# The scale bench (issue 10) against nginx on loopback: `reasonq batch` on 10k, 100k and 1M
# distinct prompts beside the bare pool, with rerun, status, cached replay and where the
# database's bytes go. Sizes: SCALE_SIZES (default 10000,100000,1000000); each run is
# killed after SCALE_TIMEOUT seconds (default 900). Work files go under SCALE_DIR (default
# the system temp dir): 1M lines need a few GB. The markdown table goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/nginx_up.sh
trap nginx_down EXIT
nginx_up
if [ -n "${SCALE_DIR:-}" ]; then mkdir -p "$SCALE_DIR"; fi
df -h "${SCALE_DIR:-${TMPDIR:-/tmp}}" >&2
cargo build --release --quiet
SCALE_BASE_URL="$NGINX_BASE" cargo bench --quiet --bench scale
