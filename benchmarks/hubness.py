"""Hubness on real music: does one track come first for most pages, and does the library's
hub correction fix it?

    python -m benchmarks.hubness [--json OUT]

Fetches Debian's ``wesnoth-1.16-music`` (41 tracks of game music, GPL; 153 MB) with
``apt-get download`` into a cache folder outside the repository (``$MANGA_MUSIC_CACHE`` or
``~/.cache/manga-music``; never committed), unpacks it with ``dpkg-deb -x``, indexes it with
the shipped demo bundle (the cached library is reused, so later runs take seconds) and
queries it with three sets: the 12 shipped demo pages (what the issue used), 60 other
pages from the demo's page generator (seed 7: a steadier statistic) and 24 texts (the
bundle's mood and genre labels, five free phrases). For each ranking: the largest share of
queries for which a single track comes first, how many distinct tracks come first, and the
skewness of the 5-occurrence distribution (the usual hubness measure; 0 = no hubs).

Rankings: the plain cosine with the near-silent ``silence.ogg`` embedded the old way (every
window, no loudness floor: the issue's situation); the plain cosine as indexed now;
CSLS-style corrections (each track's score lowered by w x its mean cosine to its k nearest
of 24 reference pages, generated with yet another seed); and the library's centring (what
``Library.index`` ranks by). tests/test_runtime_library_hubs.py asserts on the same
figures (skipped where apt cannot fetch the package).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "wesnoth-1.16-music"
DEFAULTS = ROOT / "runtime" / "defaults"
TEXTS = ("sad piano", "epic battle drums", "calm forest at night", "funny dance", "scary night")


def cache_dir() -> Path:
    return Path(os.environ.get("MANGA_MUSIC_CACHE") or Path.home() / ".cache" / "manga-music")


def fetch_wesnoth(cache: Path | None = None) -> Path | None:
    """The folder of Wesnoth's .ogg tracks, downloaded and unpacked once; None when apt
    cannot fetch the package here (no apt-get, no network, no such package)."""
    cache = (cache or cache_dir()) / "wesnoth"
    music = cache / "x" / "usr" / "share" / "games" / "wesnoth"
    found = sorted(music.glob("*/data/core/music")) if music.is_dir() else []
    if found and any(found[0].glob("*.ogg")):
        return found[0]
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True, capture_output=True, timeout=600)
            (deb,) = Path(tmp).glob("*.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "x")], check=True, capture_output=True,
                           timeout=600)
        except (subprocess.SubprocessError, OSError, ValueError):
            return None
    found = sorted(music.glob("*/data/core/music"))
    return found[0] if found else None


def hub_stats(scores: np.ndarray, k: int = 5) -> dict:
    """Largest first-place share (and whose), distinct first tracks, skewness of N_k."""
    first = np.argmax(scores, axis=1)
    counts = np.bincount(first, minlength=scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    nk = np.bincount(top.ravel(), minlength=scores.shape[1]).astype(np.float64)
    skew = float(((nk - nk.mean()) ** 3).mean() / max(nk.std(), 1e-12) ** 3)
    return {"top_share": round(float(counts.max() / len(first)), 4), "top": int(counts.argmax()),
            "distinct_first": int((counts > 0).sum()), "n5_skewness": round(skew, 2)}


def _pages(folder: Path, per_genre: int, seed: int) -> list[Path]:
    from training.synthetic.layouts import write_example_pages

    if not any(folder.glob("*.jpg")):
        write_example_pages(folder, per_genre, seed)
    return sorted(folder.glob("*.jpg"))


def measure(music: Path, cache: Path | None = None, threads: int = 2) -> dict:
    """Index ``music`` with the demo bundle and report hub statistics per query set and ranking."""
    from runtime.encoders import Encoders
    from runtime.errors import LibraryError
    from runtime.library import Library, build_library

    cache = (cache or cache_dir()) / "wesnoth"
    enc = Encoders(DEFAULTS / "bundle", device="cpu", precision="int8", threads=threads)
    lib_dir = cache / "library"
    try:  # a library cached by an earlier demo bundle is embedded again with this one
        with Library.open(lib_dir) as old:
            stale = old.meta.bundle_fingerprint != enc.bundle.fingerprint
    except LibraryError:
        stale = False
    report = build_library(music, lib_dir, enc, progress=False, rebuild=stale)
    m = enc.bundle.manifest
    labels = [ls.template.format(c) if "{" in ls.template else c for ls in m.labels for c in ls.classes]
    queries = {
        "12 demo pages": enc.embed_images(sorted((DEFAULTS / "pages").glob("*.jpg"))),
        "60 other pages": enc.embed_images(_pages(cache / "pages-seed7", 5, 7)),
        "24 texts": enc.embed_texts(labels + list(TEXTS)),
    }
    reference = enc.embed_images(_pages(cache / "reference-seed2", 2, 2))
    with Library.open(cache / "library") as lib:
        names = [i.relpath for i in lib.all_tracks()]
        pooled = np.asarray(lib.tracks, np.float32)
        silent = [Path(s.path).name for s in lib.silent()]
        as_indexed = {k: lib.scores(q) for k, q in queries.items()}
    te = enc.embed_track(music / "silence.ogg", floor_dbfs=-np.inf)  # the situation
    with_silence = np.concatenate([pooled, te.pooled[None, :]])
    ref_cos = reference @ pooled.T
    rankings = {"silence.ogg embedded whole, plain cosine (before)": lambda q: q @ with_silence.T,
                "loudness floor, plain cosine": lambda q: q @ pooled.T}
    for k in (5, 10):
        for w in (0.5, 1.0):
            term = np.sort(ref_cos, axis=0)[-k:].mean(axis=0)
            rankings[f"loudness floor, CSLS k={k} w={w:g}"] = lambda q, t=term, w=w: q @ pooled.T - w * t
    out = {"tracks": len(names), "silent": silent, "embedded_seconds": round(report.seconds_embedded, 1),
           "track_cone_mean_cosine": round(float((pooled @ pooled.T)[np.triu_indices(len(pooled), 1)].mean()), 3),
           "table": {}}
    for qname, q in queries.items():
        rows = {}
        for rname, fn in rankings.items():
            s = hub_stats(fn(q))
            s["top"] = (names + ["silence.ogg"])[s["top"]]
            rows[rname] = s
        s = hub_stats(as_indexed[qname])
        s["top"] = names[s["top"]]
        rows["loudness floor, centred (as indexed)"] = s
        out["table"][qname] = rows
    return out


def markdown(out: dict) -> str:
    lines = ["| ranking | " + " | ".join(out["table"]) + " |", "|---|" + "---|" * len(out["table"])]
    for rname in next(iter(out["table"].values())):
        cells = [f"{r[rname]['top_share']:.0%} ({r[rname]['distinct_first']} firsts, skew {r[rname]['n5_skewness']})"
                 for r in out["table"].values()]
        lines.append(f"| {rname} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    music = fetch_wesnoth()
    if music is None:
        print(f"cannot fetch {PACKAGE} with apt-get here", file=sys.stderr)
        return 2
    out = measure(music)
    print(json.dumps(out, indent=2))
    print(markdown(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
