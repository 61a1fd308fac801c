"""nginx in front of the door: it owns every caller connection.

Several workers; per-client connection limits; whole-header and body timeouts; body
caps; only the paths each port serves. The door checks and rebuilds messages behind
it. Rendered whole from a ``GatewayConfig``, for ``tce serve --gateway`` and the images."""
from __future__ import annotations

import grp
import os
import shutil
from pathlib import Path

from tce_gateway.config import GatewayConfig
from tce_gateway.errors import GatewayError

NOT_SERVED = 'return 404 \'{"error":"not served by the gateway"}\';'
# nginx answers a body over the cap itself (before the door sees it): in the door's words.
TOO_LARGE = ('error_page 413 @too_large; location @too_large {{ return 413 \'{{"error":"refused by the gateway: '
             'the body is larger than {0} bytes"}}\'; }}')
# gRPC callers get a gRPC status (RESOURCE_EXHAUSTED) in a trailers-only answer.
GRPC_TOO_LARGE = ('error_page 413 @too_large; location @too_large {{ default_type application/grpc; '
                  'add_header grpc-status 8 always; add_header grpc-message "refused by the gateway: the message is '
                  'larger than {0} bytes" always; return 204; }}')
# nginx directive prefix -> directory under the run directory (the defaults may not be writable)
TEMP_DIRS = {"client_body": "body", "proxy": "proxy", "fastcgi": "fastcgi", "uwsgi": "uwsgi", "scgi": "scgi"}


class NginxMissing(GatewayError):
    """No nginx binary: say how to get one."""


def find_nginx() -> str:
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx",
                                                         "/usr/local/nginx/sbin/nginx") if os.access(p, os.X_OK)), None)
    if binary is None:
        raise NginxMissing("the gateway needs nginx (Debian/Ubuntu: apt-get install nginx-light), "
                           "or run it with docker compose")
    return binary


def _proxy(upstream: str, timeout_s: float) -> str:
    return (f"proxy_pass http://{upstream}; proxy_http_version 1.1; proxy_set_header Connection \"\"; "
            f"proxy_read_timeout {int(timeout_s) + 5}s; proxy_send_timeout 30s;")


def render(config: GatewayConfig, door_http: int, door_grpc: int, run_dir: Path) -> str:
    """The whole nginx.conf."""
    limits = config.limits
    user = ""
    if os.geteuid() == 0:  # workers drop root; Debian calls the group nogroup, others nobody
        group = "nogroup" if _group_exists("nogroup") else "nobody"
        user = f"user nobody {group};\n"
    temp = "\n".join(f"    {directive}_temp_path {run_dir / name};" for directive, name in TEMP_DIRS.items())
    servers = []
    if config.http_port is not None:
        servers.append(f"""
  server {{  # HTTP/REST: KServe v2 inference, discovery, the admin API (key checked by the door)
    listen {config.address}:{config.http_port} backlog=4096;
    location /v2 {{ {_proxy("tce_door_http", limits.timeout_s)} }}
    location /v1/models/ {{ {_proxy("tce_door_http", limits.timeout_s)} }}
    location / {{ {NOT_SERVED} }}
    {TOO_LARGE.format(limits.max_body_bytes)}
  }}""")
    if config.grpc_port is not None:
        servers.append(f"""
  server {{  # gRPC: inference.GRPCInferenceService
    listen {config.address}:{config.grpc_port} http2 backlog=4096;
    http2_max_concurrent_streams 128;
    location / {{ grpc_pass grpc://tce_door_grpc; grpc_read_timeout {int(limits.timeout_s) + 5}s; }}
    {GRPC_TOO_LARGE.format(limits.max_body_bytes)}
  }}""")
    if config.sagemaker_port is not None:
        servers.append(f"""
  server {{  # SageMaker: GET /ping, POST /invocations (the model management API is not served)
    listen {config.address}:{config.sagemaker_port} backlog=4096;
    location = /ping {{ {_proxy("tce_door_http", limits.timeout_s)} }}
    location = /invocations {{ {_proxy("tce_door_http", limits.timeout_s)} }}
    location / {{ {NOT_SERVED} }}
    {TOO_LARGE.format(limits.max_body_bytes)}
  }}""")
    workers = config.nginx_workers or "auto"
    return f"""# Rendered by tce_gateway.nginx; edit GatewayConfig, not this file.
{user}daemon off;
worker_processes {workers};
pid {run_dir / "nginx.pid"};
error_log {run_dir / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
{temp}
    default_type application/json;
    # One client address holds at most this many connections (HTTP/2: streams) per port.
    limit_conn_zone $binary_remote_addr zone=per_client:10m;
    limit_conn per_client {config.max_connections_per_client};
    limit_conn_status 429;
    # A whole header within this time; the body with no pause longer than this.
    client_header_timeout {config.header_timeout_s}s;
    client_body_timeout {config.body_timeout_s}s;
    send_timeout 30s;
    keepalive_timeout 30s;
    keepalive_requests 10000;
    reset_timedout_connection on;
    lingering_timeout 2s;
    client_max_body_size {limits.max_body_bytes};
    client_body_buffer_size 1m;
    large_client_header_buffers 4 16k;
    upstream tce_door_http {{ server 127.0.0.1:{door_http}; keepalive 128; }}
    upstream tce_door_grpc {{ server 127.0.0.1:{door_grpc}; keepalive 128; }}
{"".join(servers)}
}}
"""


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
