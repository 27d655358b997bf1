"""CLIP's byte-level BPE tokenizer, in pure Python + numpy (no torch).

Turns text into the int64 [N, context_length] token matrix the text encoder takes:
start token, BPE ids, end token, zero padding. It reproduces OpenAI CLIP's
``SimpleTokenizer`` + ``clip.tokenize(..., truncate=True)`` id for id; the fixture
``tests/golden/tokenizer_cases.json`` pins that.
"""
from __future__ import annotations

import functools
import gzip
import heapq
import html
import importlib.resources
from pathlib import Path
from typing import IO, Sequence

import ftfy
import numpy as np
import regex

from .errors import BundleError
from .manifest import TextPreprocess

DEFAULT_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# CLIP uses the first 49152 - 256 - 2 merges of the file: 256 byte tokens + their '</w>'
# twins + one token per merge + 2 specials = 49408 ids. Line 0 of the file is a header.
_N_MERGES = 49152 - 256 - 2
_VOCAB_SIZE = 49408
_SOT, _EOT = "<|startoftext|>", "<|endoftext|>"

# CLIP's pre-tokenizer: specials, English contractions, letter runs, single digits, and runs
# of anything else that is not whitespace. IGNORECASE matters for contractions ("I'D").
_PAT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WS = regex.compile(r"\s+")

# The per-word BPE cache is bounded so that tokenizing an unbounded stream of text cannot
# grow memory without limit; when full it is simply cleared (words repeat a lot, so it refills).
_CACHE_LIMIT = 200_000


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values onto printable unicode characters.

    Printable Latin-1 bytes map to themselves; the rest are shifted to 256+ so that no BPE
    symbol is whitespace or a control character.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    # Insertion order matters: the vocabulary lists the printable bytes first (ids 0..187),
    # then the shifted ones, exactly as this dict iterates.
    return table


def clean_text(text: str) -> str:
    """CLIP's text normalisation: ftfy, HTML unescape (twice, for double-escaped text),
    whitespace collapsed, stripped, lower case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = _WS.sub(" ", text.strip()).strip()
    return text.lower()


def _open_default_vocab() -> IO[bytes]:
    # importlib.resources also works when the package is installed as a zip.
    return importlib.resources.files(__package__).joinpath("assets", DEFAULT_VOCAB_FILE).open("rb")


def _read_merges(vocab_path: str | Path | None) -> list[tuple[str, str]]:
    where = str(vocab_path) if vocab_path is not None else f"packaged {DEFAULT_VOCAB_FILE}"
    try:
        raw = _open_default_vocab() if vocab_path is None else open(vocab_path, "rb")
        with raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read BPE vocabulary {where}: {exc}") from None
    merges = [tuple(line.split()) for line in lines[1:_N_MERGES + 1]]
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise BundleError(f"BPE vocabulary {where} is malformed: expected {_N_MERGES} merge lines of two symbols")
    return merges  # type: ignore[return-value]


class Tokenizer:
    """CLIP BPE tokenizer. ``tok("a page")`` -> int64 [1, context_length]."""

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = 77,
                 sot_token: int = 49406, eot_token: int = 49407):
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start + end token), got {context_length}")
        merges = _read_merges(vocab_path)
        self.byte_encoder = bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [_SOT, _EOT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        # The manifest states the special ids; a vocabulary that disagrees is the wrong file.
        if len(vocab) != _VOCAB_SIZE or self.encoder[_SOT] != sot_token or self.encoder[_EOT] != eot_token:
            raise BundleError(
                f"BPE vocabulary does not match the configuration: {len(vocab)} tokens with specials "
                f"{self.encoder[_SOT]}/{self.encoder[_EOT]}, expected {_VOCAB_SIZE} with {sot_token}/{eot_token}")
        self.context_length = context_length
        self.sot_token = sot_token
        self.eot_token = eot_token
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_config(cls, cfg: TextPreprocess, bundle_dir: str | Path | None = None) -> "Tokenizer":
        """Build from the manifest's text section; the vocabulary file lives in the bundle folder.

        With no ``bundle_dir`` the vocabulary that ships with the package is used.
        """
        path = None if bundle_dir is None else Path(bundle_dir) / cfg.vocab_file
        if path is not None and not path.is_file():
            raise BundleError(f"bundle {bundle_dir} has no vocabulary file {cfg.vocab_file}")
        return cls(path, cfg.context_length, cfg.sot_token, cfg.eot_token)

    # -- BPE ---------------------------------------------------------------------------
    def _bpe_word(self, word: str) -> list[int]:
        """Ids of one pre-tokenized word (already mapped through the byte encoder)."""
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        # The last symbol carries the end-of-word marker, as in training.
        ids = [self.encoder[p] for p in bpe_merge(list(word[:-1]) + [word[-1] + "</w>"], self.bpe_ranks)]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """BPE ids of ``text`` without start/end tokens; with ``limit``, only the first
        ``limit`` ids, and words past them are never encoded (each word's ids do not depend
        on the words after it, so this is ``encode(text)[:limit]``, without the work)."""
        ids: list[int] = []
        for m in _PAT.finditer(clean_text(text)):
            if limit is not None and len(ids) >= limit:
                break
            word = "".join(self.byte_encoder[b] for b in m.group().encode("utf-8"))
            ids.extend(self._bpe_word(word))
        return ids if limit is None else ids[:limit]

    def decode(self, ids: Sequence[int]) -> str:
        """Best-effort inverse of ``encode`` (gives the cleaned, lower-cased text); for debugging."""
        byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        skip = {self.sot_token, self.eot_token, 0}  # 0 is padding here, not the '!' token
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in skip)
        # '<', '/', 'w', '>' are byte symbols too, so the word marker survives decoding as text.
        raw = bytearray(byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return raw.replace("</w>", " ").strip()

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token matrix int64 [N, context_length]: start, ids, end, zeros.

        Text longer than ``context_length - 2`` ids is truncated, and the end token is kept,
        because the text encoder reads its output at the end token's position.
        """
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        room = self.context_length - 2
        for row, text in enumerate(texts):
            ids = self.encode(text, limit=room)
            out[row, 0] = self.sot_token
            out[row, 1:1 + len(ids)] = ids
            out[row, 1 + len(ids)] = self.eot_token
        return out


def bpe_merge(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to a word's symbols: what CLIP's loop does, in O(n log n).

    CLIP's loop finds the adjacent pair with the lowest merge rank, merges every occurrence
    of it left to right, and starts again: quadratic in the word's length (a 16,000-letter
    word took 28 s). Here the symbols are a linked list and the candidate pairs a heap keyed
    by (rank, position); each round pops all entries of the lowest rank and merges them in
    position order, skipping entries a merge has made stale. A round cannot create a pair of
    its own rank (the merged symbol is longer than either half), so the rounds, and the
    result, are CLIP's own; ``tests/test_tokenizer.py`` checks it against CLIP's loop.
    """
    n = len(parts)
    if n < 2:
        return parts
    sym = list(parts)
    nxt = list(range(1, n + 1))  # n: no next symbol
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = [(ranks[(sym[i], sym[i + 1])], i) for i in range(n - 1) if (sym[i], sym[i + 1]) in ranks]
    heapq.heapify(heap)
    while heap:
        rank = heap[0][0]
        starts = []
        while heap and heap[0][0] == rank:
            starts.append(heapq.heappop(heap)[1])
        for i in sorted(set(starts)):
            j = nxt[i] if alive[i] else n
            # Ranks name pairs one to one: an entry whose symbols changed (a merge earlier in
            # this round took one of them, or an earlier round grew it) is stale.
            if j >= n or ranks.get((sym[i], sym[j])) != rank:
                continue
            sym[i] = sym[i] + sym[j]
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            # The merged symbol's new neighbours may form mergeable pairs (of higher rank).
            if prv[i] >= 0 and (sym[prv[i]], sym[i]) in ranks:
                heapq.heappush(heap, (ranks[(sym[prv[i]], sym[i])], prv[i]))
            if nxt[i] < n and (sym[i], sym[nxt[i]]) in ranks:
                heapq.heappush(heap, (ranks[(sym[i], sym[nxt[i]])], i))
    return [sym[i] for i in range(n) if alive[i]]


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The tokenizer built from the vocabulary shipped with the package (built once)."""
    return Tokenizer()
