"""The Triton replicas behind the door, reached over HTTP and gRPC connection pools.

An inference or a read that could not reach a replica (connection refused, or the
connection dropped before an answer: the server died), or that a replica refused because
one of its Python steps died, is sent once more to the next replica; the failed one is
tried last for a second. Inference has no side effects, so
running it twice is harmless. Administrative calls go to every replica, so their
model states stay in step."""
from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass

import grpc

from tce_gateway.config import Limits, Replica
from tce_gateway.errors import Refusal

SERVICE = "inference.GRPCInferenceService"
DOWN_S = 1.0
# gRPC details Triton's client library gives when no server process answered.
_NOT_REACHED = ("Connection refused", "failed to connect", "Socket closed", "Connection reset", "connection reset",
                "Broken pipe", "Cancelling all calls", "DNS resolution failed", "recvmsg")
# Triton's answer when a Python step's process died: the replica is broken, the request did not run.
_BROKEN_STEP = b"is not healthy"
_STUB = b"Stub process"
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.enable_retries", 0),
                    ("grpc.max_receive_message_length", 256 << 20)]


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


class Unreachable(Exception):
    """No replica answered: the message says why, for the caller's 503."""


def not_reached(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.UNAVAILABLE and any(m in (error.details() or "") for m in _NOT_REACHED)


class Triton:
    def __init__(self, replicas: tuple[Replica, ...], limits: Limits) -> None:
        self._replicas = replicas
        self._limits = limits
        self._turn = 0
        self._down_until = [0.0] * len(replicas)
        self._pools = [ConnectionPool(r.http) for r in replicas]
        self._channels: list[grpc.aio.Channel] = []

    async def start(self) -> None:
        options = [*_CHANNEL_OPTIONS, ("grpc.max_send_message_length", self._limits.max_body_bytes + (1 << 20))]
        self._channels = [grpc.aio.insecure_channel(r.grpc, options=options) for r in self._replicas]

    async def close(self) -> None:
        for pool in self._pools:
            pool.close()
        for channel in self._channels:
            await channel.close()

    def _order(self) -> list[int]:
        """Replicas in turn, those that just failed last."""
        count = len(self._replicas)
        self._turn = (self._turn + 1) % count
        order = [(self._turn + i) % count for i in range(count)]
        now = time.monotonic()
        return sorted(order, key=lambda i: self._down_until[i] > now)

    def _failed(self, index: int) -> None:
        self._down_until[index] = time.monotonic() + DOWN_S

    async def http(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                   timeout_s: float | None = None) -> HttpAnswer:
        """One call, retried once on the next replica if this one could not be reached."""
        reasons = []
        order = self._order()[:2]
        for attempt, index in enumerate(order):
            try:
                answer = await self._http_once(index, method, path, body, headers, timeout_s)
            except ConnectionError as error:
                self._failed(index)
                reasons.append(f"{self._replicas[index].http}: {error or type(error).__name__}")
                continue
            except ValueError as error:  # an answer that is not HTTP as Triton writes it
                raise Refusal(f"Triton's answer could not be read: {error}", 502) from None
            if attempt + 1 < len(order) and answer.status >= 500 and _BROKEN_STEP in answer.body \
                    and _STUB in answer.body:
                self._failed(index)  # a step of this replica died: the request never ran there
                continue
            return answer
        raise Unreachable("; ".join(reasons))

    async def http_all(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> HttpAnswer:
        """The same call on every replica; the answer is the first failure, else the first answer."""
        answers = []
        for index in range(len(self._replicas)):
            try:
                answers.append(await self._http_once(index, method, path, body, headers, None))
            except ConnectionError as error:
                raise Unreachable(f"{self._replicas[index].http}: {error or type(error).__name__}") from None
        return next((a for a in answers if a.status >= 300), answers[0])

    async def _http_once(self, index: int, method: str, path: str, body: bytes | None,
                         headers: dict[str, str] | None, timeout_s: float | None) -> HttpAnswer:
        return await asyncio.wait_for(self._pools[index].exchange(method, path, body, headers or {}),
                                      timeout_s or self._limits.timeout_s)

    async def fetch(self, path: str) -> tuple[int, bytes]:
        answer = await self.http("GET", path, timeout_s=10)
        return answer.status, answer.body

    async def grpc(self, method: str, payload: bytes, timeout_s: float,
                   metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
        """A unary call with an encoded request; Triton's errors are raised as they are."""
        last: grpc.aio.AioRpcError | None = None
        order = self._order()[:2]
        for attempt, index in enumerate(order):
            try:
                return await self._grpc_once(index, method, payload, timeout_s, metadata)
            except grpc.aio.AioRpcError as error:
                details = error.details() or ""
                broken = attempt + 1 < len(order) and _BROKEN_STEP.decode() in details and _STUB.decode() in details
                if not (not_reached(error) or broken):
                    raise
                self._failed(index)
                last = error
        assert last is not None
        raise last

    async def grpc_all(self, method: str, payload: bytes, timeout_s: float,
                       metadata: tuple[tuple[str, str], ...]) -> bytes:
        replies = [await self._grpc_once(i, method, payload, timeout_s, metadata) for i in range(len(self._replicas))]
        return replies[0]

    async def _grpc_once(self, index: int, method: str, payload: bytes, timeout_s: float,
                         metadata: tuple[tuple[str, str], ...]) -> bytes:
        call = self._channels[index].unary_unary(f"/{SERVICE}/{method}")
        return await asyncio.wait_for(call(payload, timeout=timeout_s, metadata=metadata or None),
                                      timeout=timeout_s + 5)


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to one Triton, with the least a proxy needs: a
    request written in one go, an answer read by its Content-Length. (A general client
    costs several times the door's own work per request.) Any surprise closes the
    connection; a connection that fails before an answer raises ConnectionError."""

    MAX_IDLE = 64
    _SAFE_PATH = re.compile(r"/[A-Za-z0-9/_.-]*")
    _SAFE_VALUE = re.compile(r"[\x20-\x7e]*")

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()

    async def exchange(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> HttpAnswer:
        request = self._request(method, path, body, headers)
        while self.idle:  # a kept connection the server may have closed meanwhile: one try each
            reader, writer = self.idle.pop()
            try:
                return await self._use(reader, writer, request)
            except _StaleConnection:
                self.close()  # the server restarted or timed them all out: start afresh
        reader, writer = await self._connect()
        try:
            return await self._use(reader, writer, request)
        except _StaleConnection as stale:
            raise ConnectionError(str(stale)) from None

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        """The request's bytes; paths and header values were checked upstream, and are again here:
        nothing a caller wrote may start a second request on this connection."""
        if not self._SAFE_PATH.fullmatch(path) or not all(self._SAFE_VALUE.fullmatch(f"{k}{v}")
                                                         for k, v in headers.items()):
            raise ValueError(f"refusing to send an unsafe path or header to Triton: {path!r}")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Accept-Encoding: identity",
                 f"Content-Length: {len(body or b'')}", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body or b"")

    async def _use(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> HttpAnswer:
        try:
            answer, keep = await self._exchange(reader, writer, request)
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as error:
            writer.close()
            raise _StaleConnection(f"{type(error).__name__}: {error}") from None
        except BaseException:
            writer.close()  # cancelled, timed out mid-answer or a malformed answer: never reuse
            raise
        # Reused only when the answer was read exactly: nothing more is waiting on it.
        if keep and not reader.at_eof() and not getattr(reader, "_buffer", b"") and len(self.idle) < self.MAX_IDLE:
            self.idle.append((reader, writer))
        else:
            writer.close()
        return answer

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError as error:
            raise ConnectionError(f"Connection refused: {error}") from None

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
                        ) -> tuple[HttpAnswer, bool]:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        received = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            received[name.strip().lower()] = value.strip()
        if "content-length" not in received:
            raise ValueError("Triton's answer has no Content-Length")
        payload = await reader.readexactly(int(received["content-length"]))
        kept = {name: received[name.lower()] for name in ("Content-Type", "Inference-Header-Content-Length")
                if name.lower() in received}
        return HttpAnswer(status, kept, payload), received.get("connection", "").lower() != "close"

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()


class _StaleConnection(Exception):
    """The connection failed before an answer came."""
