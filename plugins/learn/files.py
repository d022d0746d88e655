"""The trained-model file: one ``.npz`` (numpy's zip of arrays, read with
``allow_pickle=False``, so loading a file never runs code) holding

- ``__meta__``: a JSON document: ``{"format": "switchyard.learn", "version": 1,
  "kind": "router" | "judge", "model": {"kind": "logreg" | "knn" | "mf", "params": {...}},
  "features": {...}, ...}`` plus what the kind needs (model names, threshold, training
  figures);
- the predictor's arrays, each under ``model.<name>``.

A file of a newer ``version`` than this code reads, or of another ``kind``, is refused with
a message that says so.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

FORMAT = "switchyard.learn"
VERSION = 1


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and why."""


def save(path: str | Path, kind: str, meta: dict[str, Any], arrays: dict[str, NDArray[Any]]) -> None:
    path = Path(path)
    doc = {"format": FORMAT, "version": VERSION, "kind": kind, **meta}
    buf = io.BytesIO()
    named: dict[str, Any] = {f"model.{k}": np.asarray(v) for k, v in arrays.items()}
    np.savez_compressed(buf, __meta__=np.array(json.dumps(doc)), **named)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def load(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            arrays = {k[len("model."):]: z[k] for k in z.files if k.startswith("model.")}
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except (OSError, ValueError, KeyError) as e:
        raise ModelFileError(f"{path}: not a Switchyard model file ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a Switchyard model file (format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise ModelFileError(f"{path}: format version {meta['version']} is newer than this "
                             f"Switchyard reads ({VERSION}); upgrade, or retrain the model")
    if meta.get("kind") != kind:
        raise ModelFileError(f"{path}: a {meta.get('kind')!r} model, not a {kind!r} model "
                             f"(train it with `switchyard train {kind}`)")
    return meta, arrays
