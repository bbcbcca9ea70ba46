"""Small Qwen2-format BPE tokenizers made from a word list: the toy model's and the tests'.

A real Qwen2 tokenizer folder holds ``vocab.json`` (byte-level token → id), ``merges.txt`` (BPE merges
by rank) and ``tokenizer_config.json`` (the special tokens). This writes the same three files for a
small vocabulary, so the pack's real prompt path (Z-Image's template, the valid tokens, the
second-to-last hidden state) runs unchanged on them, with nothing fetched and no ../shared:

- the 256 byte symbols at ids 0-255, as in Qwen2's vocabulary (any text can be encoded);
- each given word as one token, at the id the caller gives (the toy model gives the real Qwen ids of
  its words, so its trained weights see the ids they were trained on);
- the chat template's special tokens at Qwen's ids: ``<|endoftext|>`` 151643 (also the pad token),
  ``<|im_start|>`` 151644, ``<|im_end|>`` 151645; ``user`` and ``assistant`` at 872 and 77091.

Why not the real files: they are 4.4 MB of someone else's vocabulary, not ours to ship in the repo,
and a user's clone has nothing beside it. Why not ``tokenizers``' trainer: its merges depend on a
corpus; here each word is reached by its own chain of merges (``Ġ r``, ``Ġr e``, ``Ġre d``), which
the build checks encodes every word as the one token it should be.
"""

from __future__ import annotations

import json
import os
import random

from .text_encoder import PAD_TOKEN_ID

SPECIAL_TOKENS = {"<|endoftext|>": PAD_TOKEN_ID, "<|im_start|>": 151644, "<|im_end|>": 151645}
TEMPLATE_WORDS = {"user": 872, "assistant": 77091}  # the template's two words, as Qwen2's vocabulary numbers them
FIRST_FREE_ID = 150000  # ids for the merge chains' inner pieces (never a whole word's id)
FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def _byte_table() -> list[tuple[int, str]]:
    """(byte, the printable symbol byte-level BPE writes for it) in id order: GPT-2's table, which Qwen2
    keeps. Printable Latin-1 bytes stand for themselves and come first; the rest move to U+0100 onward."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [(b, chr(b)) for b in printable] + [(b, chr(256 + n)) for n, b in enumerate(others)]


def byte_level(text: str) -> str:
    """``text`` in byte-level symbols (a space becomes ``Ġ``, a newline ``Ċ``)."""
    symbol = dict(_byte_table())
    return "".join(symbol[b] for b in text.encode("utf-8"))


def from_byte_level(token: str) -> str:
    byte = {s: b for b, s in _byte_table()}
    return bytes(byte[c] for c in token).decode("utf-8")


def write_tokenizer(folder: str, words: dict[str, int]) -> str:
    """A Qwen2 BPE tokenizer folder where each key of ``words`` (plain text such as " red" or "user")
    is one token with the given id. Returns ``folder``."""
    vocab = {symbol: i for i, (_, symbol) in enumerate(_byte_table())}
    wanted = {byte_level(w): i for w, i in {**TEMPLATE_WORDS, **words}.items()}
    taken = set(vocab.values()) | set(wanted.values()) | set(SPECIAL_TOKENS.values())
    clash = {t: i for t, i in wanted.items() if i < 256 or i in SPECIAL_TOKENS.values() or list(wanted.values()).count(i) > 1}
    if clash:
        raise ValueError(f"token ids used twice or reserved (bytes 0-255, special tokens): {clash}")
    free = (i for i in range(FIRST_FREE_ID, PAD_TOKEN_ID) if i not in taken)
    merges: list[tuple[str, str]] = []
    # Words that start with a space first: every merge of theirs has a "Ġ…" left side, which no other
    # word contains, so those chains always fire before anything else in their word.
    for token in sorted(wanted, key=lambda t: (not t.startswith("Ġ"), t)):
        piece = token[0]
        for symbol in token[1:]:
            merged = piece + symbol
            if merged not in vocab:
                vocab[merged] = wanted.get(merged) if merged in wanted else next(free)
                merges.append((piece, symbol))
            piece = merged
    vocab.update(SPECIAL_TOKENS)  # in the vocabulary too, so they keep Qwen's ids (else they are numbered after it)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(_config(), fh, ensure_ascii=False, indent=1)
    _check_words_are_single_tokens(folder, wanted)
    return folder


def _config() -> dict:
    special = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
               for t, i in SPECIAL_TOKENS.items()}
    return {
        "tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "add_prefix_space": False, "errors": "replace",
        "added_tokens_decoder": special, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "model_max_length": 131072, "clean_up_tokenization_spaces": False, "split_special_tokens": False,
    }


def _check_words_are_single_tokens(folder: str, wanted: dict[str, int]) -> None:
    """The merge chains reach every word whole (a word list whose chains interfere is refused)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for token, token_id in wanted.items():
        text = from_byte_level(token)
        got = tokenizer(text, add_special_tokens=False).input_ids
        if got != [token_id]:
            raise ValueError(f"tokenizer word list: {text!r} encodes as {got}, not as its own token {token_id}")


def seeded_words(seed: int, count: int = 64) -> dict[str, int]:
    """``count`` made-up lower-case words (each with a leading space, as they appear mid-prompt) at
    distinct random ids: a test tokenizer's vocabulary, from a seed."""
    rng = random.Random(seed)
    reserved = set(TEMPLATE_WORDS.values()) | set(SPECIAL_TOKENS.values())
    words: dict[str, int] = {}
    while len(words) < count:
        word = " " + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        token_id = rng.randrange(256, FIRST_FREE_ID)
        if word not in words and token_id not in reserved and token_id not in words.values():
            words[word] = token_id
    return words


def write_test_tokenizer(folder: str, seed: int = 0, extra_words: dict[str, int] | None = None) -> str:
    """The tests' tokenizer: seeded made-up words plus ``extra_words``."""
    return write_tokenizer(folder, {**seeded_words(seed), **(extra_words or {})})
