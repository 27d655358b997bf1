"""A soundtrack as an .m3u8 playlist, for people who want to listen along in a music player.

One entry per play, in order, each with its length (``#EXTINF``) and, for players that
honour them (VLC), where to start and stop in the track (``#EXTVLCOPT:start-time`` /
``stop-time``); a comment line says which pages it goes with. Plain M3U cannot crossfade,
so the overlaps of the cue sheet become back-to-back entries. Paths are written relative to
the playlist's folder when the track lies under it, else absolute.
"""
from __future__ import annotations

from pathlib import Path

from .planner import Soundtrack


def m3u8_text(track: Soundtrack, playlist_dir: str | Path | None = None) -> str:
    lines = ["#EXTM3U", f"#PLAYLIST:{_clean(Path(track.source).name or 'soundtrack')}"]
    base = Path(playlist_dir).resolve() if playlist_dir is not None else None
    entries = [(seg, p) for seg in track.segments for p in seg.plays]
    for i, (seg, p) in enumerate(entries):
        # Back to back: each entry stops where the next one begins.
        until = entries[i + 1][1].start_seconds if i + 1 < len(entries) else p.end_seconds
        length = max(until - p.start_seconds, 0.0)
        lines.append(f"# pages {seg.first_page + 1}-{seg.last_page + 1}, from {p.start_seconds:.1f} s "
                     f"of reading ({p.reason})")
        lines.append(f"#EXTINF:{int(round(length))},{_clean(Path(p.track.path).stem)}")
        lines.append(f"#EXTVLCOPT:start-time={p.offset_seconds:.3f}")
        lines.append(f"#EXTVLCOPT:stop-time={p.offset_seconds + length:.3f}")
        lines.append(_where(p.track.path, base))
    return "\n".join(lines) + "\n"


def _where(path: str, base: Path | None) -> str:
    p = Path(path).resolve()
    if base is not None and p.is_relative_to(base):
        return p.relative_to(base).as_posix()
    return str(p)


def _clean(text: str) -> str:
    # A title is one line; a comma is fine after the first one, newlines are not.
    return " ".join(str(text).split())
