"""Triton's request traces read back: one request's per-step timeline (``tce trace``).

Two forms are read:

- the trace file of Triton's ``triton`` mode (``tce serve --trace-file``): a JSON list of
  records, ``{"id", "model_name", "model_version", "request_id"?, "parent_id"?}`` and
  ``{"id", "timestamps": [{"name", "ns"}]}``; with ``log-frequency`` it is split over
  ``FILE.0``, ``FILE.1``, ... (read together when FILE itself is absent);
- OpenTelemetry's OTLP/JSON (``--trace-otel``: what a collector's file exporter writes, one
  export request per line): a span per model (attribute ``triton.model_name``) whose
  ``compute`` child holds the COMPUTE_* events, under the frontend's ``InferRequest`` span.

Each traced request is the ensemble's trace (no parent) and its steps' traces (parent: the
ensemble's). Times in the timeline are milliseconds from the request's start (the frontend's
receipt when traced, else the ensemble's REQUEST_START).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tce_backends.errors import UsageError

STEP_EVENTS = ("REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
               "COMPUTE_END", "REQUEST_END")
# The frontend's own events: GRPC_WAITREAD_START is when it began waiting for a request, not one's start.
RECEIPT = ("HTTP_RECV_START", "GRPC_WAITREAD_END")
SENT = ("HTTP_SEND_END", "GRPC_SEND_END")


@dataclass
class Span:
    """One model's part of a request: the ensemble, or one of its steps."""

    key: str
    model: str = ""
    version: str = ""
    request_id: str = ""
    parent: str | None = None
    events: dict[str, int] = field(default_factory=dict)   # name -> ns (the first of each)

    def at(self, name: str) -> int | None:
        return self.events.get(name)

    def add(self, name: str, ns: int) -> None:
        self.events.setdefault(name, int(ns))


@dataclass(frozen=True)
class RequestTrace:
    root: Span
    steps: tuple[Span, ...]   # ordered by their REQUEST_START

    @property
    def start_ns(self) -> int:
        found = [self.root.at(name) for name in (*RECEIPT, "REQUEST_START")]
        return min(n for n in found if n is not None)

    @property
    def end_ns(self) -> int:
        found = [self.root.at(name) for name in (*SENT, "REQUEST_END")]
        return max(n for n in found if n is not None)


def trace_files(path: Path) -> list[Path]:
    """``path``, or its ``path.<n>`` parts (Triton's log-frequency) in order."""
    parts = sorted(path.parent.glob(f"{path.name}.*"), key=lambda p: (len(p.suffix), p.suffix))
    parts = [p for p in parts if re.fullmatch(r"\.\d+", p.suffix)]
    if path.is_file():
        return [path, *parts]
    if parts:
        return parts
    raise UsageError(f"no trace file {path} (nor {path.name}.0, ...): Triton writes it when it stops, or every "
                     "log-frequency traces")


def _triton_records(records: list[Any], spans: dict[str, Span]) -> None:
    for record in records:
        if not isinstance(record, dict) or "id" not in record:
            continue
        span = spans.setdefault(str(record["id"]), Span(str(record["id"])))
        if "model_name" in record:
            span.model, span.version = str(record["model_name"]), str(record.get("model_version", ""))
            span.request_id = str(record.get("request_id", ""))
            span.parent = str(record["parent_id"]) if record.get("parent_id") is not None else None
        for stamp in record.get("timestamps", ()):
            span.add(str(stamp["name"]), stamp["ns"])


def _attributes(span: dict[str, Any]) -> dict[str, str]:
    values = {}
    for item in span.get("attributes", ()):
        value = item.get("value", {})
        values[item["key"]] = str(next(iter(value.values()), "")) if isinstance(value, dict) else str(value)
    return values


def _otlp_spans(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for resource in document.get("resourceSpans", ()):
        for scope in resource.get("scopeSpans", ()):
            yield from scope.get("spans", ())


def _otlp_records(documents: list[dict[str, Any]], spans: dict[str, Span]) -> None:
    """OTLP spans -> one Span per model: its ``compute`` child's events and the frontend's
    ``InferRequest`` events are folded into the model span they belong to."""
    raw = {s["spanId"]: s for d in documents for s in _otlp_spans(d)}
    for span_id, span in raw.items():
        attributes = _attributes(span)
        if "triton.model_name" in attributes:
            parent = span.get("parentSpanId") or None
            parent_is_model = parent in raw and "triton.model_name" in _attributes(raw[parent])
            spans[span_id] = Span(span_id, attributes["triton.model_name"], attributes.get("triton.model_version", ""),
                                  parent=parent if parent_is_model else None)
    for span_id, span in raw.items():
        parent = span.get("parentSpanId") or None
        if span_id in spans:
            target = spans[span_id]
        elif parent in spans:          # a model's "compute" span
            target = spans[parent]
        else:                          # the frontend's span: its events belong to the ensemble under it
            children = [s for s in spans.values() if raw[s.key].get("parentSpanId") == span_id]
            if not children:
                continue
            target = children[0]
        for event in span.get("events", ()):
            target.add(event["name"], int(event["timeUnixNano"]))


def read_traces(path: Path) -> list[RequestTrace]:
    """Every traced request of a trace file (or its parts), in the order they started."""
    spans: dict[str, Span] = {}
    for part in trace_files(Path(path)):
        text = part.read_text(encoding="utf-8").strip()
        if not text:
            continue
        try:
            document = json.loads(text)
            documents = [document]
        except ValueError:  # OTLP/JSON lines: one export request per line
            try:
                documents = [json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError:
                raise UsageError(f"{part} is neither Triton's trace file nor OTLP/JSON") from None
        if isinstance(documents[0], list):
            for document in documents:
                _triton_records(document, spans)
        elif all(isinstance(d, dict) and "resourceSpans" in d for d in documents):
            _otlp_records(documents, spans)
        else:
            raise UsageError(f"{part} is neither Triton's trace file nor OTLP/JSON")
    roots = [s for s in spans.values() if s.parent is None and s.model and "REQUEST_START" in s.events]
    traces = [RequestTrace(root, tuple(sorted((s for s in spans.values() if s.parent == root.key and s.events),
                                              key=lambda s: s.events.get("REQUEST_START", 0))))
              for root in roots]
    return sorted(traces, key=lambda t: t.start_ns)


def pick(traces: list[RequestTrace], request_id: str | None = None) -> RequestTrace:
    """The request with ``request_id`` (its caller's id), else the last one that has steps."""
    if request_id is not None:
        found = [t for t in traces if t.root.request_id == request_id]
        if not found:
            ids = sorted({t.root.request_id for t in traces if t.root.request_id})
            raise UsageError(f"no traced request has id {request_id!r} (traced ids: {', '.join(ids[:10]) or 'none'})")
        return found[-1]
    with_steps = [t for t in traces if t.steps]
    if not with_steps:
        raise UsageError("the trace holds no request of an ensemble with steps")
    return with_steps[-1]


def _ms(ns: int | None, origin: int) -> str:
    return f"{(ns - origin) / 1e6:9.2f}" if ns is not None else f"{'':9}"


def _span_ms(span: Span, first: str, last: str) -> str:
    a, b = span.at(first), span.at(last)
    return f"{(b - a) / 1e6:9.2f}" if a is not None and b is not None else f"{'':9}"


def format_timeline(trace: RequestTrace) -> str:
    """One request, one line per part: when each step started and ended, its queue wait and its
    compute (taking the inputs, running, giving the outputs), in ms from the request's start."""
    origin, root = trace.start_ns, trace.root
    name = f"'{root.request_id}' " if root.request_id else ""
    lines = [f"request {name}to {root.model} (version {root.version}): {(trace.end_ns - origin) / 1e6:.2f} ms from "
             "receipt to answer",
             f"  {'part':<22}{'start':>9}{'queue':>9}{'compute':>9}{'input':>9}{'infer':>9}{'output':>9}{'end':>9}"
             "   (ms)"]
    for event in RECEIPT:
        if root.at(event) is not None:
            lines.append(f"  {event.split('_')[0] + ' received':<22}{_ms(root.at(event), origin)}")
    for span in (root, *trace.steps):
        label = span.model if span is root else f"  {span.model}"
        lines.append(f"  {label:<22}{_ms(span.at('REQUEST_START'), origin)}"
                     f"{_span_ms(span, 'QUEUE_START', 'COMPUTE_START')}{_span_ms(span, 'COMPUTE_START', 'COMPUTE_END')}"
                     f"{_span_ms(span, 'COMPUTE_START', 'COMPUTE_INPUT_END')}"
                     f"{_span_ms(span, 'COMPUTE_INPUT_END', 'COMPUTE_OUTPUT_START')}"
                     f"{_span_ms(span, 'COMPUTE_OUTPUT_START', 'COMPUTE_END')}{_ms(span.at('REQUEST_END'), origin)}")
    for event in SENT:
        if root.at(event) is not None:
            lines.append(f"  {event.split('_')[0] + ' answer sent':<22}{_ms(root.at(event), origin)}")
    return "\n".join(line.rstrip() for line in lines) + "\n"
