"""The C++ WordPiece (csrc/wordpiece.cpp via dnd_fast/wordpiece.py) against its reference, the `tokenizers`
library: the same ids for every text, whichever path encodes it."""
import copy
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import _minilm_tokenizer, reseed

from dnd_fast import dispatch
from dnd_fast.wordpiece import FastWordPiece, encode_flat, reference_ids

pytestmark = pytest.mark.skipif(not dispatch.HAS_EXT, reason="needs the built extension (dnd_fast._C)")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def truncating(backend, max_length):
    backend = copy.deepcopy(backend)
    backend.enable_truncation(max_length)
    backend.no_padding()
    return backend


@pytest.fixture(scope="module")
def minilm():
    return _minilm_tokenizer()._tokenizer


def assert_same(backend, texts, max_length):
    backend = truncating(backend, max_length)
    fast = FastWordPiece.from_backend(backend, max_length)
    assert fast is not None
    ids, lengths = fast.encode(texts)
    want = reference_ids(backend, texts)
    assert lengths.tolist() == [len(w) for w in want]
    got = np.split(ids, np.cumsum(lengths)[:-1]) if len(texts) else []
    for text, g, w in zip(texts, got, want):
        assert g.tolist() == w, f"{text!r}: {g.tolist()} != {w}"


def random_ascii(rng: random.Random, n: int) -> str:
    """Mostly words, spaces and punctuation, with every ASCII code point (controls included) now and then."""
    pools = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " ", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
             "".join(map(chr, range(128)))]
    return "".join(rng.choice(rng.choices(pools, weights=[40, 8, 6, 14, 6, 3])[0]) for _ in range(n))


@pytest.mark.parametrize("max_length", [3, 7, 50, 384])
def test_random_ascii_texts_match_the_reference(minilm, max_length):
    rng = random.Random(reseed())
    words = list(minilm.get_vocab())
    texts = [random_ascii(rng, rng.randint(0, 300)) for _ in range(150)]
    # vocabulary words glued together and cased oddly: the greedy ## pieces; 120-char runs: [UNK] by length
    texts += [" ".join("".join(rng.choice(words).replace("##", "") for _ in range(rng.randint(1, 4))).swapcase()
                       for _ in range(rng.randint(1, 40))) for _ in range(60)]
    texts += ["x" * 100, "x" * 101, "a" * 120 + " b", "", " \t\n\r", "\x00\x0b\x0c\x1c\x7f"]
    assert_same(minilm, texts, max_length)


def test_texts_left_to_the_reference_keep_their_place(minilm):
    """Non-ASCII text and text holding a special token's name go to the reference, spliced back in order."""
    texts = ["plain text", "héllo wörld", "a [CLS] b", "[mask] me", "naïve", "ascii again, 2 + 2 = 4?", "日本語"]
    backend = truncating(minilm, 384)
    fast = FastWordPiece.from_backend(backend, 384)
    raw_ids, raw_lengths = dispatch.EXT.wordpiece_encode(fast.handle, texts, 384)
    assert (np.frombuffer(raw_lengths, np.int64) < 0).tolist() == [False, True, True, True, True, False, True]
    assert_same(minilm, texts, 384)


def test_a_small_cased_vocabulary_with_unknown_words():
    """lowercase off, a short max_input_chars_per_word, words with no piece: the whole word is [UNK]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "Un", "a", "##b", "!", "##", "x", "##x"]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                     max_input_chars_per_word=6))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                 ("[SEP]", 3)])
    rng = random.Random(0)
    texts = ["unaffable Unaffable UNAFFABLE", "ab abb abc xxxxxx xxxxxxx", "un! !un", "a##b"]
    texts += [" ".join(rng.choice(["un", "aff", "able", "Un", "a", "b", "x", "!", "zz"]) * rng.randint(1, 3)
                       for _ in range(rng.randint(1, 12))) for _ in range(200)]
    assert_same(tok, texts, 384)
    assert_same(tok, texts, 5)


def test_other_tokenizers_keep_the_reference():
    from tokenizers import Tokenizer, models, pre_tokenizers

    bpe = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    assert FastWordPiece.from_backend(truncating(bpe, 16), 16) is None
    ids, lengths = encode_flat(truncating(bpe, 16), None, ["ab a", "b"])
    assert ids.tolist() == [2, 0, 1] and lengths.tolist() == [2, 1]


def test_a_changed_pipeline_keeps_the_reference(minilm):
    from tokenizers import normalizers

    changed = truncating(minilm, 384)
    changed.normalizer = normalizers.BertNormalizer(clean_text=False)
    assert FastWordPiece.from_backend(changed, 384) is None
    assert FastWordPiece.from_backend(truncating(minilm, 384), 200) is None  # truncating elsewhere


def test_copies_rebuild_the_table(minilm):
    fast = FastWordPiece.from_backend(truncating(minilm, 64), 64)
    for twin in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert [a.tolist() for a in twin.encode(["copy me, please"])] == \
               [a.tolist() for a in fast.encode(["copy me, please"])]


def test_prompt_encoder_ids_are_the_references(tiny_encoder):
    from dnd_fast.encoder import PromptEncoder

    enc = PromptEncoder(tiny_encoder, max_length=40, num_prompts=4)
    texts = ["What is 2 + 2?", "Ünïcode goes to the reference", "a " * 50, "[SEP] inside"]
    fast = enc.tokens_on_host(texts, trim=True)
    assert enc._rust[2] is not None
    enc._rust = (*enc._rust[:2], None)
    assert fast.tolist() == enc.tokens_on_host(texts, trim=True).tolist()


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent (task data is not in the repo)")
def test_every_text_of_the_task_data(minilm):
    texts = []
    for path in sorted(DATA.rglob("*.json")):
        for item in json.loads(path.read_text()):
            texts += [v for v in item.values() if isinstance(v, str)]
    assert len(texts) > 10000
    assert_same(minilm, texts, 384)
