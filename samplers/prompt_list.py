"""Prompt lists for batches: read them (typed lines, .txt, .csv, .jsonl), give every item its seed
(fixed, increment per item, random with the seed recorded), and run one generation per item with each
distinct prompt encoded once and nothing of a finished item kept but what its callback saves."""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ..loaders.errors import ZImageInputError

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


def read_prompt_file(path: str) -> list[PromptItem]:
    """A .txt (one prompt per line), .csv (a header with a ``prompt`` column; optional ``negative``,
    ``seed``) or .jsonl (one object per line with ``prompt``; optional ``negative``, ``seed``)."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in PROMPT_FILE_TYPES:
        raise ZImageInputError("file", f"'{os.path.basename(path)}'", f"a {', '.join(PROMPT_FILE_TYPES)} file", "save the prompts as one of those")
    with open(path, encoding="utf-8-sig") as handle:
        text = handle.read()
    if extension == ".txt":
        return parse_prompt_lines(text)
    if extension == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "prompt" not in [f.strip() for f in reader.fieldnames]:
            raise ZImageInputError("file", f"'{os.path.basename(path)}' with columns {reader.fieldnames}", "a header row with a 'prompt' column",
                                   "add a first line such as: prompt,negative,seed")
        rows = [({k.strip(): v for k, v in row.items() if k is not None}, n + 2) for n, row in enumerate(reader)]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ZImageInputError("file", f"line {n} of '{os.path.basename(path)}' is not JSON ({exc.msg})", "one JSON object per line",
                                       'write each line as {"prompt": "...", "seed": 1}') from None
            if not isinstance(row, dict):
                raise ZImageInputError("file", f"line {n} of '{os.path.basename(path)}' is a {type(row).__name__}", "a JSON object per line",
                                       'write each line as {"prompt": "..."}')
            rows.append((row, n))
    return [_item(row, where, os.path.basename(path)) for row, where in rows]


def _item(row: dict, line: int, file_name: str) -> PromptItem:
    prompt = row.get("prompt")
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
