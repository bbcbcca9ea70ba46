"""Prompt lists for batches: read them (typed lines, .txt, .csv, .jsonl), give every item its seed
(fixed, increment per item, random with the seed recorded), and run one generation per item with each
distinct prompt encoded once and nothing of a finished item kept but what its callback saves."""

from __future__ import annotations

import csv
import io
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ..loaders.errors import ZImageInputError
from ..loaders.json_text import parse_json

SEED_MODES = ("fixed", "increment", "random")
MAX_SEED = 0xFFFFFFFFFFFFFFFF
PROMPT_FILE_TYPES = (".txt", ".csv", ".jsonl")


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    negative: str = ""
    seed: int | None = None  # None: the seed mode decides


def parse_prompt_lines(text: str) -> list[PromptItem]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    return [PromptItem(line.strip()) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


MAX_PROMPT_FILE_BYTES = 8 * 2**20
MAX_PROMPT_ROWS = 100_000
MAX_FIELD_CHARS = 64 * 1024  # one prompt; far beyond the 512 tokens Z-Image reads


def read_prompt_file(path: str, shown_name: str | None = None) -> list[PromptItem]:
    """A .txt (one prompt per line), .csv (a header with a ``prompt`` column; optional ``negative``,
    ``seed``) or .jsonl (one object per line with ``prompt``; optional ``negative``, ``seed``), at most
    8 MiB and 100,000 rows. Every problem is the pack's error naming the file (as ``shown_name``: the
    name the user picked, never the server's path) and the line."""
    name = shown_name or os.path.basename(path)
    extension = os.path.splitext(path)[1].lower()
    if extension not in PROMPT_FILE_TYPES:
        raise ZImageInputError("file", f"'{name}'", f"a {', '.join(PROMPT_FILE_TYPES)} file", "save the prompts as one of those")
    size = os.path.getsize(path)
    if size > MAX_PROMPT_FILE_BYTES:
        raise ZImageInputError("file", f"'{name}' of {size / 2**20:.1f} MiB", f"at most {MAX_PROMPT_FILE_BYTES // 2**20} MiB",
                               "split it into several files, one per queued prompt")
    with open(path, "rb") as handle:
        data = handle.read(MAX_PROMPT_FILE_BYTES + 1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ZImageInputError("file", f"'{name}' with bytes that are not UTF-8 on line {line}", "a UTF-8 text file",
                               "save the file as UTF-8 (most editors offer it under 'Save as… / Encoding')") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise ZImageInputError("file", f"'{name}' with a NUL character on line {line}", "a text file", "remove it (is this a text file?)")
    if extension == ".txt":
        items = parse_prompt_lines(text)
    elif extension == ".csv":
        items = _csv_items(text, name)
    else:
        items = _jsonl_items(text, name)
    if len(items) > MAX_PROMPT_ROWS:
        raise ZImageInputError("file", f"'{name}' with {len(items)} prompts", f"at most {MAX_PROMPT_ROWS}", "split it into several files")
    for index, item in enumerate(items):
        if len(item.prompt) > MAX_FIELD_CHARS or len(item.negative) > MAX_FIELD_CHARS:
            raise ZImageInputError("file", f"prompt {index + 1} of '{name}' with {max(len(item.prompt), len(item.negative))} characters",
                                   f"at most {MAX_FIELD_CHARS} characters per prompt (Z-Image reads 512 tokens)", "shorten it")
    return items


def _csv_items(text: str, name: str) -> list[PromptItem]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        if not reader.fieldnames or "prompt" not in [f.strip() for f in reader.fieldnames]:
            raise ZImageInputError("file", f"'{name}' with columns {reader.fieldnames}", "a header row with a 'prompt' column",
                                   "add a first line such as: prompt,negative,seed")
        rows = []
        for row in reader:
            if len(rows) >= MAX_PROMPT_ROWS:
                raise ZImageInputError("file", f"'{name}' with more than {MAX_PROMPT_ROWS} rows", f"at most {MAX_PROMPT_ROWS}", "split it into several files")
            rows.append(({k.strip(): v for k, v in row.items() if k is not None}, reader.line_num))
    except csv.Error as exc:  # e.g. a field over the csv module's limit (128 KiB)
        raise ZImageInputError("file", f"'{name}' that is not readable CSV on line {reader.line_num} ({exc})",
                               "rows of comma-separated fields, a prompt at most a few thousand characters", "fix that line") from None
    return [_item(row, where, name) for row, where in rows]


def _jsonl_items(text: str, name: str) -> list[PromptItem]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(rows) >= MAX_PROMPT_ROWS:
            raise ZImageInputError("file", f"'{name}' with more than {MAX_PROMPT_ROWS} rows", f"at most {MAX_PROMPT_ROWS}", "split it into several files")
        row = parse_json(line, "file", f"line {n} of '{name}'", 'write each line as {"prompt": "...", "seed": 1}')
        if not isinstance(row, dict):
            raise ZImageInputError("file", f"line {n} of '{name}' is a {type(row).__name__}", "a JSON object per line",
                                   'write each line as {"prompt": "..."}')
        rows.append((row, n))
    return [_item(row, where, name) for row, where in rows]


def _item(row: dict, line: int, file_name: str) -> PromptItem:
    prompt = row.get("prompt")
    negative = row.get("negative")
    if negative is not None and not isinstance(negative, (str, int, float)):
        raise ZImageInputError("file", f"line {line} of '{file_name}' has a {type(negative).__name__} as its negative", "a text", "write the negative prompt as text")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ZImageInputError("file", f"line {line} of '{file_name}' has no prompt", "a non-empty 'prompt' on every row", "fill it in or delete the row")
    seed = row.get("seed")
    if seed in (None, ""):
        seed = None
    else:
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise ZImageInputError("file", f"seed {seed!r} on line {line} of '{file_name}'", "a whole number", "fix the seed or leave it empty") from None
        if not 0 <= seed <= MAX_SEED:
            raise ZImageInputError("file", f"seed {seed} on line {line} of '{file_name}'", f"0 to {MAX_SEED}", "use a seed in that range")
    return PromptItem(prompt.strip(), str(row.get("negative") or ""), seed)


def assign_seeds(items: list[PromptItem], seed: int, mode: str) -> list[PromptItem]:
    """Every item's seed: a row's own seed wins; else ``fixed`` (all ``seed``), ``increment``
    (``seed + index``) or ``random`` (drawn from ``seed``: the same list and seed give the same seeds,
    and each is recorded in the picture)."""
    if mode not in SEED_MODES:
        raise ZImageInputError("seed_mode", repr(mode), f"one of {SEED_MODES}", "pick one in the node")
    draw = random.Random(seed)
    out = []
    for index, item in enumerate(items):
        own = {"fixed": seed, "increment": (seed + index) & MAX_SEED, "random": draw.randrange(MAX_SEED + 1)}[mode]
        out.append(PromptItem(item.prompt, item.negative, own if item.seed is None else item.seed))
    return out


def run_items(items: list[PromptItem], encode: Callable[[str], object], generate: Callable[[int, PromptItem, object, object], None],
              check_interrupt: Callable[[], None] = lambda: None, with_negative: bool = False) -> int:
    """Runs ``generate(index, item, positive, negative)`` for each item in order; returns how many ran.

    Every distinct text is encoded once, all before the first generation (so a text encoder that
    shares the card with the transformer is swapped once, not per item), and each encoding is dropped
    after the last item that uses it. ``generate`` saves its own result; nothing of it is kept here, so
    memory does not grow with the list. ``check_interrupt`` runs between items: what is done stays done."""
    texts = [item.prompt for item in items] + ([item.negative for item in items] if with_negative else [])
    uses = Counter(texts)
    encoded = {}
    for text in uses:
        check_interrupt()
        encoded[text] = encode(text)
    for index, item in enumerate(items):
        check_interrupt()
        generate(index, item, encoded[item.prompt], encoded[item.negative] if with_negative else None)
        for text in ([item.prompt, item.negative] if with_negative else [item.prompt]):
            uses[text] -= 1
            if uses[text] == 0:
                del encoded[text]
    return len(items)
