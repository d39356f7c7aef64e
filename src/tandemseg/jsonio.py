"""JSON in and out, one way everywhere: results files (`--json`), the report tables, the HTTP state API.

`json_safe` is the one sanitiser: numpy (and torch) arrays and scalars become Python lists and numbers, NaN and
infinities become null (JSON has no spelling for them, and a strict reader rejects Python's), tuples
become lists and mapping keys strings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def json_safe(obj: Any) -> Any:
    """`obj` with every value JSON can hold as it is, recursively (see the module docstring)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "ndim"):  # numpy arrays and scalars, torch tensors
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any) -> str:
    """Indented JSON of `json_safe(obj)`, newline-terminated; refuses what it cannot represent (no silent str())."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON to `path` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(obj))
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def dataclass_from_json(cls, d: dict, error: type[Exception], what: str):
    """`cls(**d)` for a config dataclass read back from a card, refusing keys it does not have (listing the valid
    ones) with `error`: a card from a newer or foreign version says so instead of failing inside the constructor."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise error(f"unknown {what} field(s) {unknown}; valid: {', '.join(sorted(known))}")
    return cls(**d)
