"""The tokenizers the pack makes itself (the toy model's, shipped in train/toy_model/tokenizer, and the
tests' seeded one): Qwen2 BPE files the real prompt path reads, with Qwen's special tokens and ids."""

import filecmp
import os

import pytest
import torch

from zimage_pack.loaders import demo_tokenizer as dt
from zimage_pack.loaders.errors import ZImageInputError
from zimage_pack.loaders.text_encoder import PAD_TOKEN_ID, PROMPT_TEMPLATE, find_tokenizer, load_tokenizer, tokenize_prompt
from zimage_pack.train import toy_world
from zimage_pack.train.toy_models import toy_paths, write_toy_tokenizer

TOY_PROMPTS = [scene.prompt for scene in toy_world.ALL_SCENES]


def test_the_shipped_toy_tokenizer_is_what_the_toy_script_writes(tmp_path):
    write_toy_tokenizer(str(tmp_path))
    shipped = toy_paths()["tokenizer"]
    for name in dt.FILES:
        assert filecmp.cmp(os.path.join(shipped, name), tmp_path / name, shallow=False), name


def test_every_toy_word_is_one_token_and_the_template_round_trips():
    tokenizer = load_tokenizer(toy_paths()["tokenizer"])
    for prompt in TOY_PROMPTS:
        ids = tokenize_prompt(tokenizer, prompt).tolist()
        # <|im_start|> user \n, then "a" and one token per further word, then <|im_end|> \n <|im_start|> assistant \n
        assert len(ids) == 3 + len(prompt.split()) + 5
        assert ids[:3] == [151644, 872, 198] and ids[-5:] == [151645, 198, 151644, 77091, 198]
        assert tokenizer.decode(ids) == PROMPT_TEMPLATE.format(prompt)


def test_text_outside_the_vocabulary_still_encodes_byte_by_byte(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    for text in ("A purple Hexagon, 85mm!", "日本語の文", "tab\tand\nnewline"):
        ids = tokenize_prompt(tokenizer, text).tolist()
        assert tokenizer.decode(ids) == PROMPT_TEMPLATE.format(text)
    assert len(tokenize_prompt(tokenizer, "word " * 2000)) == 512


def test_the_pad_token_is_qwens(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.pad_token_id == PAD_TOKEN_ID and tokenizer.convert_ids_to_tokens(PAD_TOKEN_ID) == "<|endoftext|>"
    padded = tokenizer(["a", "a b c"], padding=True).input_ids
    assert padded[0][1:] == [PAD_TOKEN_ID] * (len(padded[1]) - 1)


def test_the_seeded_tokenizer_depends_on_its_seed(tmp_path):
    a, b, c = (load_tokenizer(dt.write_test_tokenizer(str(tmp_path / name), seed)) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    word = next(iter(dt.seeded_words(0)))
    assert a(word).input_ids == b(word).input_ids and len(a(word).input_ids) == 1
    assert a.get_vocab() != c.get_vocab()


def test_a_word_list_whose_merge_chains_interfere_is_refused(tmp_path):
    # "re" is built first ("r e" ranks before "x r"), so "xre" would come out as "x" + "re"
    with pytest.raises(ValueError, match="'xre' encodes as"):
        dt.write_tokenizer(str(tmp_path), {"re": 300, "xre": 301})
    with pytest.raises(ValueError, match="used twice or reserved"):
        dt.write_tokenizer(str(tmp_path), {" red": 42})


def test_find_tokenizer_names_every_place_it_looked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ZImageInputError) as err:
        find_tokenizer([("--tokenizer", None), ("the diffusers folder's tokenizer/", str(empty)), ("ZIMAGE_TOKENIZER_DIR", str(tmp_path / "gone"))],
                       how_to_fix="pass --tokenizer DIR")
    text = str(err.value)
    assert "--tokenizer: not given" in text and f"'{empty}' has no vocab.json and merges.txt" in text
    assert f"'{tmp_path / 'gone'}' does not exist" in text and "How to fix: pass --tokenizer DIR" in text


@pytest.mark.shared
def test_the_toy_tokenizer_gives_every_toy_prompt_the_real_qwen_ids(real_tokenizer_dir):
    """What keeps the trained toy text encoder valid: the same ids as the tokenizer it was trained with."""
    toy, real = load_tokenizer(toy_paths()["tokenizer"]), load_tokenizer(real_tokenizer_dir)
    for prompt in TOY_PROMPTS:
        assert torch.equal(tokenize_prompt(toy, prompt), tokenize_prompt(real, prompt)), prompt


@pytest.mark.shared
def test_the_made_tokenizers_share_the_real_byte_table_and_template_ids(tokenizer_dir, real_tokenizer_dir):
    made, real = load_tokenizer(tokenizer_dir), load_tokenizer(real_tokenizer_dir)
    real_vocab = real.get_vocab()
    for token, token_id in made.get_vocab().items():
        if token_id < 256 or token_id >= PAD_TOKEN_ID or token in ("user", "assistant"):
            assert real_vocab[token] == token_id, token
    assert torch.equal(tokenize_prompt(made, ""), tokenize_prompt(real, ""))
