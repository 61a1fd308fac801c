"""What a served model takes and returns, read from Triton's own model config.

The door checks every input against this: names, datatypes, shapes (batch within
``max_batch_size``, fixed dims equal to the config's) and so the work a request can
ask for is known before anything is forwarded."""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from tce_backends.contract import SCHEMA_PARAMETER
from tce_gateway.errors import Refusal

# KServe v2 datatype -> bytes per element (0: BYTES, length-prefixed strings)
ITEM_SIZES = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
              "INT64": 8, "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8, "BYTES": 0}
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"   # a model name the door forwards
VERSION_PATTERN = r"[1-9][0-9]{0,9}"
MODEL_NAME = re.compile(NAME_PATTERN)  # used with fullmatch: "$" would also match before a final newline
VERSION = re.compile(VERSION_PATTERN)
MAX_DIMS = 8


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str              # KServe v2 name: FP32, BYTES, ...
    dims: tuple[int, ...]      # without the batch dimension; -1: any size
    optional: bool = False

    @classmethod
    def from_config(cls, entry: dict) -> "TensorSpec":
        kind = str(entry.get("data_type", ""))
        datatype = "BYTES" if kind == "TYPE_STRING" else kind.removeprefix("TYPE_")
        if datatype not in ITEM_SIZES:
            raise ValueError(f"tensor {entry.get('name')!r} has an unknown data_type {kind!r}")
        return cls(str(entry["name"]), datatype, tuple(int(d) for d in entry.get("dims", ())),
                   bool(entry.get("optional", False)))

    @property
    def numeric(self) -> bool:
        return self.datatype != "BYTES"


@dataclass(frozen=True)
class ModelSignature:
    name: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    published_schema: str | None = None  # the ensemble's schema for record callers (tce_client.schema)

    @classmethod
    def from_config(cls, config: dict) -> "ModelSignature":
        schema = (config.get("parameters") or {}).get(SCHEMA_PARAMETER, {}).get("string_value")
        return cls(str(config["name"]), int(config.get("max_batch_size", 0)),
                   {e["name"]: TensorSpec.from_config(e) for e in config.get("input", ())},
                   {e["name"]: TensorSpec.from_config(e) for e in config.get("output", ())}, schema)

    def elements(self, spec: TensorSpec, shape: list, max_elements: int, limit: int | None = None) -> int:
        """The element count of ``shape`` for input ``spec``, or a Refusal saying what is wrong
        (more than ``max_elements``, what is left of the request's ``limit``, among it)."""
        limit = max_elements if limit is None else limit
        where = f"input '{spec.name}'"
        if not isinstance(shape, list) or not shape or len(shape) > MAX_DIMS or \
                not all(type(d) is int for d in shape):
            raise Refusal(f"{where}: shape must be a list of 1 to {MAX_DIMS} integers, got {_short(shape)}")
        batched = self.max_batch_size > 0
        expected = len(spec.dims) + (1 if batched else 0)
        if len(shape) != expected:
            raise Refusal(f"{where}: shape {shape} has {len(shape)} dimensions, the model takes {expected} "
                          f"({self._form(spec)})")
        if batched and not 1 <= shape[0] <= self.max_batch_size:
            raise Refusal(f"{where}: batch dimension {shape[0]} is outside 1..{self.max_batch_size} "
                          f"(max_batch_size of '{self.name}')")
        count = 1
        for got, want in zip(shape[1:] if batched else shape, spec.dims, strict=True):
            if want >= 0 and got != want:
                raise Refusal(f"{where}: shape {shape} does not match {self._form(spec)}")
            if got < 1 and want < 0:
                raise Refusal(f"{where}: shape {shape} holds a dimension below 1")
        for got in shape:
            count *= got
            if count > max_elements:
                raise Refusal(f"{where}: shape {shape} takes the request beyond the gateway's {limit} elements",
                              413)
        return count

    def _form(self, spec: TensorSpec) -> str:
        dims = ["batch"] * (self.max_batch_size > 0) + ["any" if d < 0 else str(d) for d in spec.dims]
        return f"[{', '.join(dims)}]"


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Fetch = Callable[[str], Awaitable[tuple[int, bytes]]]


class SignatureCache:
    """Model signatures by (model, version), fetched from Triton's config endpoint and
    kept ``ttl_s`` seconds, so a model reloaded behind the door's back is seen soon after
    (one loaded through the door clears the cache at once)."""

    def __init__(self, fetch: Fetch, ttl_s: float = 2.0) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[float, ModelSignature]] = {}
        self._pending: dict[tuple[str, str], asyncio.Future] = {}

    def clear(self) -> None:
        """Forget every signature (after a model was loaded or unloaded through the door)."""
        self._entries.clear()

    async def get(self, model: str, version: str = "") -> ModelSignature:
        if not MODEL_NAME.fullmatch(model):
            raise Refusal(f"unknown model {_short(model)}", 404)
        if version and not VERSION.fullmatch(version):
            raise Refusal(f"model '{model}': version must be a positive integer, got {_short(version)}", 404)
        key = (model, version)
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] < self._ttl_s:
            return entry[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(model, version))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _load(self, model: str, version: str) -> ModelSignature:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/config"
        status, body = await self._fetch(path)
        if status != 200:
            what = f"model '{model}'" + (f" version {version}" if version else "")
            raise Refusal(f"unknown model: {what} is not served here", 404)
        signature = ModelSignature.from_config(json.loads(body))
        self._entries[(model, version)] = (time.monotonic(), signature)
        return signature
