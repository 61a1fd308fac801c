"""tce_gateway's connection to Triton (upstream.ConnectionPool), its settings (config) and
what its HTTP side accepts before any model is involved (paths, compression, keys)."""
from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from tce_gateway.config import DoorConfig, Limits, Replica
from tce_gateway.errors import Refusal
from tce_gateway.http_app import ADMIN, DISCOVERY, INFER, decompressed
from tce_gateway.upstream import ConnectionPool


async def _serve(answers: list[bytes]) -> tuple[asyncio.AbstractServer, int, list[bytes]]:
    """A stand-in for Triton that answers each request on a connection with the next of ``answers``."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            seen.append(head + await reader.readexactly(length))
            writer.write(answers.pop(0))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def test_answers_are_read_by_length_and_the_connection_is_kept():
    async def scenario() -> None:
        server, port, seen = await _serve([_ok(b"one"), _ok(b"two")])
        pool = ConnectionPool(f"127.0.0.1:{port}")
        first = await pool.exchange("POST", "/v2/models/m/infer", b"{}", {"Content-Type": "application/json"})
        second = await pool.exchange("GET", "/v2/health/ready", None, {})
        assert (first.body, second.body, first.status) == (b"one", b"two", 200)
        assert len(seen) == 2 and seen[0].startswith(b"POST /v2/models/m/infer HTTP/1.1\r\n")
        pool.close()
        server.close()
    asyncio.run(scenario())


def test_bytes_beyond_an_answer_never_reach_the_next_request():
    async def scenario() -> None:
        server, port, _ = await _serve([_ok(b"one") + _ok(b"stale"), _ok(b"fresh")])
        pool = ConnectionPool(f"127.0.0.1:{port}")
        assert (await pool.exchange("GET", "/v2", None, {})).body == b"one"
        await asyncio.sleep(0.1)
        answer = await pool.exchange("GET", "/v2", None, {})
        assert answer.body != b"stale"
        pool.close()
        server.close()
    asyncio.run(scenario())


@pytest.mark.parametrize("path, headers", [("/v2/health/live\n", {}), ("/v2 HTTP/1.1\r\nX: y", {}),
                                           ("/v2", {"tce-admin-key": "k\r\nX-Injected: 1"})])
def test_nothing_a_caller_wrote_can_start_a_second_request(path, headers):
    with pytest.raises(ValueError, match="unsafe path or header"):
        asyncio.run(ConnectionPool("127.0.0.1:9").exchange("GET", path, None, headers))


def test_a_dead_server_is_a_connection_error():
    with pytest.raises(ConnectionError, match="Connection refused"):
        asyncio.run(ConnectionPool("127.0.0.1:9").exchange("GET", "/v2", None, {}))


@pytest.mark.parametrize("path, pattern", [("/v2/health/live\n", DISCOVERY), ("/v2/models/m\n/infer", INFER),
                                           ("/v2/repository/index\n", ADMIN), ("/v2/models/../x/infer", INFER),
                                           ("/v2/models/m%2Fx/ready", DISCOVERY)])
def test_paths_match_whole_or_not_at_all(path, pattern):
    assert pattern.fullmatch(path) is None


def test_bodies_inflate_within_the_cap_and_only_whole():
    body = b'{"inputs": []}'
    assert decompressed(gzip.compress(body), "gzip", 100) == body
    assert decompressed(zlib.compress(body), "deflate", 100) == body
    with pytest.raises(Refusal, match="decompresses to more than 100 bytes") as too_big:
        decompressed(gzip.compress(b" " * 10_000), "gzip", 100)
    assert too_big.value.status == 413
    for broken in (gzip.compress(body)[:-6], gzip.compress(body) + gzip.compress(body), gzip.compress(body) + b"x"):
        with pytest.raises(Refusal, match="not one complete gzip stream|not valid gzip"):
            decompressed(broken, "gzip", 100)
    with pytest.raises(Refusal, match="Content-Encoding 'br' is not accepted") as unknown:
        decompressed(body, "br", 100)
    assert unknown.value.status == 415


def test_door_settings_are_checked_when_made():
    replica = Replica("127.0.0.1:8000", "127.0.0.1:8001")
    with pytest.raises(ValueError, match="host:port"):
        Replica("127.0.0.1", "x:1")
    with pytest.raises(ValueError, match="needs the key callers must present"):
        DoorConfig((replica,), 1, 2, triton_admin_key="k" * 20)
    with pytest.raises(ValueError, match="printable ASCII"):
        DoorConfig((replica,), 1, 2, admin_key="\u00e9" * 20)
    with pytest.raises(ValueError, match="max_elements must be >= 1"):
        Limits(max_elements=0)
    door = DoorConfig((replica,), 1, 2, admin_key="operator-key-0123456789", triton_admin_key="triton-key-0123456789")
    assert door.admits("operator-key-0123456789") and not door.admits("triton-key-0123456789")
    assert not door.admits("") and not door.admits("operator-key-0123456789\n")
    assert door.forwarded_key("operator-key-0123456789") == "triton-key-0123456789"
    open_door = DoorConfig((replica,), 1, 2)
    assert open_door.admits("anything-printable") and not open_door.admits("k\udcff")
