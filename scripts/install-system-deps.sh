#!/usr/bin/env bash
# Install the Debian packages the test suite runs for real (Prometheus, promtool, nginx), if missing.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# nginx checks the scale-out balancer's config (deploy/nginx/nginx.conf) with `nginx -t`.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packages enable system services; the tests start their own servers on loopback.
for unit in prometheus nginx; do
  $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
done
