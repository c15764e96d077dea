#!/bin/sh
# A self-signed certificate for the compose proxy (docker/nginx/certs/server.{crt,key}, or the
# directory given), valid for localhost and 127.0.0.1 for 30 days. Clients trust it with WASTE_CA_FILE=docker/nginx/certs/server.crt.
# For anything but a demo, put a certificate from your CA in that directory instead.
set -eu
dir="${1:-$(dirname "$0")/certs}"
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -keyout "$dir/server.key" -out "$dir/server.crt" -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1"
chmod 644 "$dir/server.key"   # nginx's workers read it inside the container
echo "wrote $dir/server.crt and $dir/server.key"
