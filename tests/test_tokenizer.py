"""CLIP BPE tokenizer: id-for-id parity with the reference fixture, plus the edge cases."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import BundleError
from runtime.manifest import TextPreprocess
from runtime.tokenizer import DEFAULT_VOCAB_SHA256, Tokenizer, bytes_to_unicode, clean_text, default_tokenizer

REPO = Path(__file__).resolve().parents[1]
GOLDEN_CASES = REPO / "tests" / "golden" / "tokenizer_cases.json"
# CI clones the repo next to shared/; the golden copy keeps the test independent of it.
SHARED_CASES = REPO.parent / "shared" / "reference" / "parity" / "tokenizer_cases.json"
ASSET = REPO / "runtime" / "assets" / "bpe_simple_vocab_16e6.txt.gz"


def _cases() -> list[dict]:
    path = GOLDEN_CASES if GOLDEN_CASES.exists() else SHARED_CASES
    return json.loads(path.read_text(encoding="utf-8"))


CASES = _cases()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return default_tokenizer()


def test_fixture_is_not_trivial():
    # The parity test below is only as good as the fixture it reads.
    assert len(CASES) >= 39
    assert any(len(c["bpe"]) > 75 for c in CASES), "fixture should hold a truncation case"
    assert any(c["text"] == "" for c in CASES)


def test_golden_copy_matches_shared_reference():
    if not SHARED_CASES.exists():
        pytest.skip("shared/reference not checked out next to the repo")
    assert json.loads(GOLDEN_CASES.read_text("utf-8")) == json.loads(SHARED_CASES.read_text("utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[repr(c["text"])[:40] for c in CASES])
def test_reference_parity(tok, case):
    assert tok.encode(case["text"]) == case["bpe"]
    row = tok(case["text"])
    assert row.shape == (1, 77) and row.dtype == np.int64
    assert row[0].tolist() == case["ids77"]


def test_vocab_asset_sha256():
    assert hashlib.sha256(ASSET.read_bytes()).hexdigest() == DEFAULT_VOCAB_SHA256


def test_vocabulary_layout(tok):
    assert len(tok.encoder) == 49408
    assert tok.encoder["<|startoftext|>"] == 49406 and tok.encoder["<|endoftext|>"] == 49407
    # 256 byte symbols, then the same with '</w>', then one per merge.
    byte_syms = list(bytes_to_unicode().values())
    assert len(set(byte_syms)) == 256
    assert tok.encoder[byte_syms[0]] == 0 and tok.encoder[byte_syms[0] + "</w>"] == 256
    assert tok.encoder["in"] == 512  # first merge line of the file is "i n"


def test_empty_string(tok):
    assert tok.encode("") == []
    row = tok("")[0]
    assert row[0] == 49406 and row[1] == 49407 and not row[2:].any()


def test_list_input_rows_match_single_calls(tok):
    texts = ["Happy music", "love romance", ""]
    batch = tok(texts)
    assert batch.shape == (3, 77) and batch.dtype == np.int64
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(batch[i], tok(t)[0])
    assert tok([]).shape == (0, 77)


def test_truncation_keeps_end_token(tok):
    ids = tok.encode("word " * 200)
    assert len(ids) == 200
    row = tok("word " * 200)[0]
    assert row[0] == 49406 and row[-1] == 49407
    assert row[1:-1].tolist() == ids[:75]


def test_short_context_length():
    t = Tokenizer(context_length=5)
    out = t(["happy music happy music", "a"])
    assert out.shape == (2, 5)
    assert out[0].tolist() == [49406] + t.encode("happy music happy")[:3] + [49407]
    assert out[1, 2] == 49407 and out[1, 3:].tolist() == [0, 0]


def test_cleanup_and_cache(tok):
    assert clean_text("  A&amp;amp;B \t\n C  ") == "a&b c"
    assert tok.encode("MUSIC") == tok.encode("music")
    tok.encode("zyxwvutsrq")
    assert "zyxwvutsrq</w>" not in tok._cache  # cached by byte-encoded word, without marker
    assert "zyxwvutsrq" in tok._cache


def test_decode_roundtrip(tok):
    assert tok.decode(tok("Happy   music")[0]) == "happy music"


def test_from_config(tmp_path):
    shutil.copy(ASSET, tmp_path / "vocab.gz")
    cfg = TextPreprocess(context_length=16, vocab_file="vocab.gz")
    t = Tokenizer.from_config(cfg, tmp_path)
    assert t("sad music").shape == (1, 16)
    assert Tokenizer.from_config(TextPreprocess(), None)("x").shape == (1, 77)
    with pytest.raises(BundleError, match="no vocabulary file"):
        Tokenizer.from_config(TextPreprocess(vocab_file="missing.gz"), tmp_path)


def test_wrong_special_ids_are_refused():
    with pytest.raises(BundleError, match="does not match"):
        Tokenizer(sot_token=1, eot_token=2)


def test_bad_vocab_file(tmp_path):
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"not gzip")
    with pytest.raises(BundleError, match="cannot read"):
        Tokenizer(junk)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wt") as f:
        f.write("#version\ni n\n")
    with pytest.raises(BundleError, match="malformed"):
        Tokenizer(short)


def _clip_bpe_loop(parts: list[str], ranks: dict) -> list[str]:
    """CLIP's own merge loop, as SimpleTokenizer.bpe writes it: the reference for bpe_merge."""
    while len(parts) > 1:
        pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(best[0] + best[1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def test_fast_bpe_equals_clips_loop_on_every_kind_of_word(tok):
    from runtime.tokenizer import bpe_merge

    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz") + ["é", "ü", "の", "1", "!"]
    words = ["aaaaaaaaaaaaaaa", "abababababab", "mississippi", "llllllllama", "tokenization", "a", "ab"]
    words += ["".join(rng.choice(letters[:k], size=int(n))) for k in (2, 3, 8, 31) for n in rng.integers(2, 60, 40)]
    enc = tok.byte_encoder
    for w in words:
        mapped = "".join(enc[b] for b in w.encode("utf-8"))
        parts = list(mapped[:-1]) + [mapped[-1] + "</w>"]
        assert bpe_merge(list(parts), tok.bpe_ranks) == _clip_bpe_loop(list(parts), tok.bpe_ranks), w


def test_a_huge_word_is_tokenized_in_well_under_a_second():
    import time

    rng = np.random.default_rng(1)
    word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=16_000))
    tok = Tokenizer()  # a fresh word cache
    t0 = time.perf_counter()
    row = tok(word)
    took = time.perf_counter() - t0
    assert row[0, 0] == tok.sot_token and tok.eot_token in row[0]
    assert took < 0.5, f"{took:.2f} s for a 16,000-letter word (CLIP's loop took 28 s)"


def test_text_is_cut_before_encoding_everything(monkeypatch):
    tok = Tokenizer()
    words = [f"w{i}x" for i in range(5000)]
    encoded = []
    real = tok._bpe_word
    monkeypatch.setattr(tok, "_bpe_word", lambda w: encoded.append(w) or real(w))
    row = tok(" ".join(words))
    pieces_encoded = len(encoded)
    # 75 ids need at most 75 pre-tokenized pieces (each gives at least one id), not all of them
    assert 0 < pieces_encoded <= 75
    assert row[0].tolist() == [tok.sot_token] + tok.encode(" ".join(words))[:75] + [tok.eot_token]
    assert len(encoded) - pieces_encoded > 5000  # the whole text, for comparison, is far more
