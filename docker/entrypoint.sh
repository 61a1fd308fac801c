#!/bin/sh
# Entrypoint of the tce Triton images: tritonserver with its administrative endpoints
# behind the admin key, restarted whenever it exits (at once, then after growing pauses,
# at most TCE_MAX_RESTARTS times in 10 minutes), plus a canary watchdog that stops a
# server whose ensemble stopped answering (a dead Python step leaves Triton "ready"), so
# that it is restarted too. See docs/security.md.
#
#   TCE_ADMIN_KEY_FILE   file holding the key (default: the compose secret below)
#   TCE_ADMIN_KEY        the key itself, when no file is given
#   TCE_WATCH_INTERVAL   seconds between canary inferences (default 10; 0: no watchdog)
#   TCE_CANARY_URL       where the watchdog reaches Triton's HTTP endpoint (default localhost:8000)
#   TCE_MAX_RESTARTS     restarts within 10 minutes before the container gives up (default 5)
#   TCE_TRACE_FILE       turn on Triton's request tracing to this JSON file (written when Triton stops;
#                        read one request's per-step timeline with `tce trace FILE`), or
#   TCE_TRACE_OTEL_URL   ... export the traces as OpenTelemetry spans to this OTLP/HTTP collector
#                        (e.g. otel-collector:4318/v1/traces)
#   TCE_TRACE_RATE       trace one request in this many (default 1000); TCE_TRACE_LEVEL TIMESTAMPS|TENSORS
#   TCE_PREDICTION_LOG, TCE_PREDICTION_LOG_RATE, TCE_PREDICTION_LOG_INPUTS   with `serve`: the gateway's
#                        sampled log of answers (python -m tce_gateway --help)
#   TCE_HOST_CPUS, TCE_HOST_GPUS   this container's cores and GPUs, where it cannot see them itself
#                        (a pod without a CPU limit sees the node); TCE_SIZING_CHECK=0 skips the check
#
# At start, the repository's instance counts (host_sizing.json, written by `tce build`) are
# compared with what the same rule (/opt/tce/host_sizing.py) gives this container: a repository
# sized for another host still serves, with a warning naming the `tce build` that fits.
#
# SageMaker starts a container as `docker run IMAGE serve`: Triton then listens on loopback
# only and the gateway (nginx + the checking door, tce_gateway) answers SageMaker's GET /ping
# and POST /invocations on $SAGEMAKER_BIND_TO_PORT (default 8080), running
# $SAGEMAKER_TRITON_DEFAULT_MODEL_NAME (default calibrated_ensemble) of the archive SageMaker
# extracted to /opt/ml/model (`tce package-sagemaker`). Triton's own SageMaker listener, which
# binds every interface and serves model management without a key, is never started. Without
# a key file a random admin key is made for the container.
set -eu

gateway=""
if [ "${1:-}" = "serve" ]; then
    shift
    model="${SAGEMAKER_TRITON_DEFAULT_MODEL_NAME:-calibrated_ensemble}"
    http_port=8000
    grpc_port=8001
    for arg in "$@"; do
        case "$arg" in
            --http-port=*) http_port="${arg#--http-port=}" ;;
            --grpc-port=*) grpc_port="${arg#--grpc-port=}" ;;
        esac
    done
    set -- "--model-repository=${SAGEMAKER_MODEL_DIR:-/opt/ml/model}" --model-control-mode=explicit \
        "--load-model=$model" --strict-readiness=true --http-address=127.0.0.1 --grpc-address=127.0.0.1 "$@"
    if [ ! -e "${TCE_ADMIN_KEY_FILE:-/run/secrets/tce_admin_key}" ] && [ -z "${TCE_ADMIN_KEY:-}" ]; then
        TCE_ADMIN_KEY="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    fi
    python3 -m tce_gateway --triton "127.0.0.1:$http_port,127.0.0.1:$grpc_port" --address 0.0.0.0 \
        --http-port off --grpc-port off --sagemaker-port "${SAGEMAKER_BIND_TO_PORT:-8080}" --default-model "$model" &
    gateway=$!
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
    [ -z "$gateway" ] || kill -TERM "$gateway" 2>/dev/null || true
    exit 64
fi
restricted="model-repository,shared-memory,logging,trace:tce-admin-key=$key"

sizing_script="${TCE_SIZING_SCRIPT:-/opt/tce/host_sizing.py}"
if [ "${TCE_SIZING_CHECK:-1}" != "0" ] && [ -r "$sizing_script" ]; then
    for arg in "$@"; do
        case "$arg" in
            --model-repository=*) python3 "$sizing_script" check "${arg#--model-repository=}" || true ;;
        esac
    done
fi

# Triton's request tracing (tce serve --trace-file / --trace-otel give the same arguments).
if [ -n "${TCE_TRACE_FILE:-}" ] && [ -n "${TCE_TRACE_OTEL_URL:-}" ]; then
    echo "tce: set TCE_TRACE_FILE or TCE_TRACE_OTEL_URL, not both: Triton traces to one place" >&2
    exit 64
fi
if [ -n "${TCE_TRACE_FILE:-}${TCE_TRACE_OTEL_URL:-}" ]; then
    trace_rate="${TCE_TRACE_RATE:-1000}"
    trace_level="${TCE_TRACE_LEVEL:-TIMESTAMPS}"
    case "$trace_rate" in ''|0|*[!0-9]*)
        echo "tce: TCE_TRACE_RATE must be a whole number >= 1 (one request in N is traced), got '$trace_rate'" >&2
        exit 64 ;;
    esac
    case "$trace_level" in TIMESTAMPS|TENSORS) ;; *)
        echo "tce: TCE_TRACE_LEVEL must be TIMESTAMPS or TENSORS, got '$trace_level'" >&2
        exit 64 ;;
    esac
    if [ -n "${TCE_TRACE_FILE:-}" ]; then
        set -- "$@" "--trace-config=triton,file=$TCE_TRACE_FILE"
    else
        set -- "$@" --trace-config=mode=opentelemetry "--trace-config=opentelemetry,url=$TCE_TRACE_OTEL_URL"
    fi
    set -- "$@" "--trace-config=level=$trace_level" "--trace-config=rate=$trace_rate"
fi

server=""
watchdog=""
stopping=""
# docker stop: end the watchdog first (a server shutting down must not look broken), then the server.
trap 'stopping=1; [ -z "$watchdog" ] || kill -TERM "$watchdog" 2>/dev/null; [ -z "$server" ] || kill -TERM "$server" 2>/dev/null || true' \
    TERM INT

max_restarts="${TCE_MAX_RESTARTS:-5}"
restarts=0
window_start=$(date +%s)
status=0
while :; do
    tritonserver "$@" "--http-restricted-api=$restricted" "--grpc-restricted-protocol=$restricted" &
    server=$!
    watchdog=""
    if [ "${TCE_WATCH_INTERVAL:-10}" != "0" ]; then
        # A dead step never finishes its in-flight requests: SIGKILL after 10 s rather than Triton's 30.
        python3 -m tce_backends.canary --url "${TCE_CANARY_URL:-localhost:8000}" --watch "$server" \
            --interval "${TCE_WATCH_INTERVAL:-10}" --grace 10 &
        watchdog=$!
    fi
    while kill -0 "$server" 2>/dev/null; do
        wait "$server" && status=0 || status=$?
    done
    broken=""
    # The watchdog ends within a fraction of a second once the server is gone; 1 means it stopped it.
    if [ -n "$watchdog" ] && ! wait "$watchdog"; then
        broken=1
    fi
    [ -z "$stopping" ] || break
    now=$(date +%s)
    if [ $((now - window_start)) -gt 600 ]; then
        restarts=0
        window_start=$now
    fi
    restarts=$((restarts + 1))
    if [ -n "$broken" ]; then
        why="the ensemble stopped answering (the watchdog stopped it)"
    else
        why="tritonserver exited with status $status"
    fi
    if [ "$restarts" -gt "$max_restarts" ]; then
        echo "tce: $why; gave up after $max_restarts restarts in 10 minutes" >&2
        [ "$status" -ne 0 ] || status=70
        break
    fi
    pause=0
    [ "$restarts" -le 1 ] || pause=$((1 << (restarts - 2)))
    echo "tce: $why; restarting it (restart $restarts of at most $max_restarts, after ${pause} s)" >&2
    sleep "$pause" &
    wait $! || true  # a signal ends the pause at once
    [ -z "$stopping" ] || break
done
if [ -n "$gateway" ]; then
    kill -TERM "$gateway" 2>/dev/null || true
    wait "$gateway" || true
fi
[ -z "$stopping" ] || status=0
exit "$status"
