"""The overrides table: CSV (a header row) or JSONL (one object per line)."""

from __future__ import annotations

import csv
import json
import os


class TableError(ValueError):
    pass


def read_table(path: str) -> list[dict]:
    """Rows as dicts, in file order; each gets ``_line`` (its line in the file) for messages."""
    extension = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if extension == ".csv":
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise TableError(f"{path}: no header row (expected column names such as prompt,seed)")
            return [{**{k.strip(): v for k, v in row.items() if k is not None and v not in (None, "")}, "_line": n + 2} for n, row in enumerate(reader)]
        if extension in (".jsonl", ".ndjson"):
            rows = []
            for n, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TableError(f"{path} line {n}: not JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise TableError(f"{path} line {n}: a {type(row).__name__}, expected a JSON object")
                rows.append({**row, "_line": n})
            return rows
    raise TableError(f"{path}: a {extension or 'file without extension'}; expected .csv or .jsonl")
