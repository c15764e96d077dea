#!/bin/sh
# The server images' entrypoint: tritonserver on the repository with only inference, health,
# metadata and model configs open to whoever reaches the ports (tests/test_deploy_files.py runs this very script
# against the bundled tritonserver). Extra arguments (the image's CMD, a pod's `args`) come last.
#
# Restricted: shared memory (the August 2025 CVE chain registered the Python backend's regions
# through it), statistics, trace and logging settings. They answer only requests
# carrying the header `triton-admin-key: $TRITON_ADMIN_KEY` over HTTP, or
# `triton-grpc-protocol-triton-admin-key` over gRPC. Without TRITON_ADMIN_KEY a random key is made
# up at start, so nobody can use them. The model-repository API stays open: with
# --model-control-mode=none it cannot load or unload anything, and clients list models with it.
# Model configs stay open too: reading one changes nothing, and clients read the model's "not
# sure" threshold from its `parameters` (waste_client's unsure_threshold="model").
set -eu
RESTRICTED="shared-memory,statistics,trace,logging"
if [ -z "${TRITON_ADMIN_KEY:-}" ]; then
    TRITON_ADMIN_KEY=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
fi
# Strict readiness: a replica reports ready only when every model loaded; the exit timeout bounds
# a rolling update's drain (the pod's terminationGracePeriodSeconds is longer).
exec "${TRITONSERVER:-tritonserver}" \
    --model-repository="${MODEL_REPOSITORY:-/models}" \
    --model-control-mode=none \
    --strict-readiness=true \
    --exit-timeout-secs=10 \
    --http-port="${HTTP_PORT:-8000}" \
    --grpc-port="${GRPC_PORT:-8001}" \
    --metrics-port="${METRICS_PORT:-8002}" \
    --metrics-config=summary_latencies=true \
    --http-restricted-api="${RESTRICTED}:triton-admin-key=${TRITON_ADMIN_KEY}" \
    --grpc-restricted-protocol="${RESTRICTED}:triton-admin-key=${TRITON_ADMIN_KEY}" \
    "$@"
