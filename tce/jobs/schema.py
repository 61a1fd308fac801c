"""``tce schema``: what a served ensemble takes and returns, as its server publishes it."""
from __future__ import annotations

from tce_client import DEFAULT_MODEL, CalibratedClassifierClient


def describe_schema(url: str | None, protocol: str = "http", model: str = DEFAULT_MODEL,
                    as_json: bool = False) -> str:
    with CalibratedClassifierClient(url, protocol=protocol, model=model) as client:  # type: ignore[arg-type]
        schema, batch = client.schema, client.max_batch_size
    if as_json:
        return schema.to_json()
    lines = [f"ensemble '{model}' at {client.url} ({protocol}), up to {batch} records per request",
             "inputs (one row per record):"]
    lines += [f"  {field:<22} BYTES [1]    raw UTF-8 text (\"\" = empty)" for field in schema.text_fields]
    if schema.numeric_features:
        lines.append(f"  {schema.inputs['numeric']:<22} FP64  [{len(schema.numeric_features)}]    "
                     f"{', '.join(schema.numeric_features)} (NaN = missing)")
    if schema.categorical_features:
        lines.append(f"  {schema.inputs['categorical']:<22} BYTES [{len(schema.categorical_features)}]    "
                     f"{', '.join(schema.categorical_features)} (\"\" = missing)")
    lines.append(f"feature order of the model: {', '.join(schema.feature_order)}")
    lines.append("tasks:")
    lines += [f"  {task.name:<22} {task.kind:<11} classes: {', '.join(task.classes)}" for task in schema.tasks]
    lines.append(f"outputs: {', '.join(schema.output_names)}")
    return "\n".join(lines)
