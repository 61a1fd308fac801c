#!/bin/sh
# Entrypoint of the tce Triton images: tritonserver with its administrative endpoints
# behind the admin key, plus a canary watchdog that stops the server when the ensemble
# stops answering (a dead Python step leaves Triton "ready"), so the container exits
# and `restart: unless-stopped` brings it back. See docs/security.md.
#
#   TCE_ADMIN_KEY_FILE   file holding the key (default: the compose secret below)
#   TCE_ADMIN_KEY        the key itself, when no file is given
#   TCE_WATCH_INTERVAL   seconds between canary inferences (default 10; 0: no watchdog)
#   TCE_CANARY_URL       where the watchdog reaches Triton's HTTP endpoint (default localhost:8000)
#
# SageMaker starts a container as `docker run IMAGE serve`: then Triton runs in SageMaker mode
# (GET /ping, POST /invocations on $SAGEMAKER_BIND_TO_PORT, default 8080) on the archive SageMaker
# extracted to /opt/ml/model (`tce package-sagemaker`), /invocations running
# $SAGEMAKER_TRITON_DEFAULT_MODEL_NAME (default calibrated_ensemble). Triton's own HTTP and gRPC
# stay on loopback, and without a key file a random admin key is made for the container.
set -eu

if [ "${1:-}" = "serve" ]; then
    shift
    export SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="${SAGEMAKER_TRITON_DEFAULT_MODEL_NAME:-calibrated_ensemble}"
    set -- "--model-repository=${SAGEMAKER_MODEL_DIR:-/opt/ml/model}" --allow-sagemaker=true \
        "--sagemaker-port=${SAGEMAKER_BIND_TO_PORT:-8080}" --model-control-mode=explicit \
        "--load-model=${SAGEMAKER_TRITON_DEFAULT_MODEL_NAME}" --strict-readiness=true \
        --http-address=127.0.0.1 --grpc-address=127.0.0.1 "$@"
    if [ ! -e "${TCE_ADMIN_KEY_FILE:-/run/secrets/tce_admin_key}" ] && [ -z "${TCE_ADMIN_KEY:-}" ]; then
        TCE_ADMIN_KEY="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    fi
fi

key_file="${TCE_ADMIN_KEY_FILE:-/run/secrets/tce_admin_key}"
if [ -r "$key_file" ]; then
    key="$(tr -d '[:space:]' < "$key_file")"
elif [ -e "$key_file" ]; then
    echo "tce: cannot read the admin key file $key_file as uid $(id -u): make it readable for that uid" \
         "(make admin-key does)" >&2
    exit 64
else
    key="${TCE_ADMIN_KEY:-}"
fi
case "$key" in *[,:=]*) key="" ;; esac
if [ "${#key}" -lt 16 ]; then
    echo "tce: no usable admin key (16+ characters without ',', ':' or '='): run 'make admin-key' to create" \
         "secrets/admin-key, or set TCE_ADMIN_KEY_FILE / TCE_ADMIN_KEY" >&2
    exit 64
fi
restricted="model-repository,shared-memory,logging,trace:tce-admin-key=$key"

tritonserver "$@" "--http-restricted-api=$restricted" "--grpc-restricted-protocol=$restricted" &
server=$!
watchdog=""
stopping=""
# docker stop: end the watchdog first (a server shutting down must not look broken), then the server.
trap 'stopping=1; [ -z "$watchdog" ] || kill -TERM "$watchdog" 2>/dev/null; kill -TERM "$server" 2>/dev/null || true' \
    TERM INT

if [ "${TCE_WATCH_INTERVAL:-10}" != "0" ]; then
    # A dead step never finishes its in-flight requests: SIGKILL after 10 s rather than Triton's 30.
    python3 -m tce_backends.canary --url "${TCE_CANARY_URL:-localhost:8000}" --watch "$server" \
        --interval "${TCE_WATCH_INTERVAL:-10}" --grace 10 &
    watchdog=$!
fi

status=0
while kill -0 "$server" 2>/dev/null; do
    wait "$server" && status=0 || status=$?
done
# The watchdog ends within a fraction of a second once the server is gone; 1 means it stopped it.
if [ -z "$stopping" ] && [ -n "$watchdog" ] && ! wait "$watchdog"; then
    echo "tce: the watchdog stopped a broken server; exiting so that the container restarts" >&2
    [ "$status" -ne 0 ] || status=70
fi
exit "$status"
