"""Publishing a generation: the state of one build, merging segments, the centre, the
approximate index, and the atomic switch of ``CURRENT``.

``BuildRun`` holds what one ``build_library`` run has written so far (its segments, the
journal naming them, the bytes written). ``publish`` turns the live generation plus this
run's segments into the next generation: deletions become per-segment sidecars, segments
of similar size are merged ``MERGE_FACTOR`` at a time and half-deleted ones compacted
(amortised O(log N) rewrites per record, as in any log-structured store, and a number of
segments logarithmic in the library's size), the hub correction's centre is recomputed
(``hubs.py``), large segments get a FAISS index (built here, at index time, never at query
time) and recall@10 is measured; then the manifest is written and ``CURRENT`` replaced (the
commit point) and whatever no generation, reader or journal needs is collected. When the
result equals the live generation, nothing is written at all.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio_preprocess import LOUDNESS_FLOOR_DBFS, MAX_TRACK_SECONDS
from ..hashing import sha256_file
from . import hubs, search_index
from .schema import (CURRENT_NAME, GEN_RE, JOURNAL_NAME, OLD_GEN_RE, AnnSpec, FileRef, GenerationManifest, HubSpec,
                     Journal, RootRef, SegmentRef, generation_name, segment_prefix)
from .search_index import IndexPart, SegmentedIndex, ann_params, build_ann, measure_recall, recall_queries
from .segments import NewRecord, OpenSegment, sound_copy, write_deleted, write_segment, write_vector_file
from .storage import collect_unlocked, fsync_dir, write_atomic, write_json_atomic

log = logging.getLogger("manga_music")

MERGE_FACTOR = 10
COMPACT_DELETED_SHARE = 0.5


@dataclass
class BuildRun:
    """Mutable state of one build (kept in one place so the steps stay small functions)."""

    lib_dir: Path
    seg_dir: Path
    kind: str
    dim: int
    fingerprint: str
    bundle: object
    centring: bool  # store a centre for the hub correction
    journal_segments: list[SegmentRef]
    next_segment: int
    root_abs: str
    bytes_written: int = 0
    new_since_start: list[SegmentRef] = field(default_factory=list)  # written by this run, not yet merged
    opened: dict[int, OpenSegment] = field(default_factory=dict)
    # merged segment id -> the member whose vectors are its first rows and whose FAISS
    # index can therefore be extended instead of rebuilt
    ann_seeds: dict[int, SegmentRef] = field(default_factory=dict)

    def open(self, ref: SegmentRef) -> OpenSegment:
        """The segment opened (once) as ``ref`` describes it."""
        seg = self.opened.get(ref.id)
        if seg is None or seg.ref != ref:
            if seg is not None:
                seg.close()
            seg = self.opened[ref.id] = OpenSegment(self.seg_dir, ref, kind=self.kind, dim=self.dim,
                                                    bundle_fingerprint=self.fingerprint)
        return seg

    def write(self, records: Sequence[NewRecord]) -> SegmentRef:
        m = self.bundle.manifest
        ref = write_segment(self.seg_dir, self.next_segment, records, kind=self.kind, dim=self.dim,
                            bundle_fingerprint=self.fingerprint, labels=m.label_set("moods"),
                            genres=m.label_set("genres") if self.kind == "pages" else None,
                            scale=m.logit_scales.audio_text if self.kind == "music" else m.logit_scales.image_text)
        self.next_segment += 1
        self.bytes_written += sum(f.bytes for f in ref.all_files())
        return ref

    def save_journal(self) -> None:
        j = Journal(self.kind, self.fingerprint, self.root_abs, tuple(self.journal_segments), self.next_segment)
        self.bytes_written += write_json_atomic(self.lib_dir / JOURNAL_NAME, j.to_dict())

    def close(self) -> None:
        for s in self.opened.values():
            s.close()
        self.opened.clear()


# -- merging -------------------------------------------------------------------------------------
def _tier(ref: SegmentRef) -> int:
    return int(math.log10(max(ref.live_records, 1)))


def plan_merges(refs: Sequence[SegmentRef]) -> list[list[SegmentRef]]:
    """Groups of segments to rewrite as one: a tier (same order of magnitude of live records)
    that has reached ``MERGE_FACTOR`` segments, and any segment more than half deleted."""
    groups = [[r] for r in refs if r.deleted_count > COMPACT_DELETED_SHARE * r.records]
    in_groups = {r.id for g in groups for r in g}
    tiers: dict[int, list[SegmentRef]] = defaultdict(list)
    for r in refs:
        if r.id not in in_groups:
            tiers[_tier(r)].append(r)
    groups += [g for _, g in sorted(tiers.items()) if len(g) >= MERGE_FACTOR]
    return groups


def _merge(run: BuildRun, group: Sequence[SegmentRef]) -> SegmentRef | None:
    """Rewrite the live records of ``group`` as one new segment (None if none is live). A
    member with an approximate index and no deletions goes first, so the merged segment's
    index can start from a copy of it (FAISS can add rows to an index, not remove them)."""
    group = sorted(group, key=lambda r: (r.ann is None or r.deleted is not None, -r.vectors))
    records: list[NewRecord] = []
    for ref in group:
        seg = run.open(ref)
        for r in seg.live_records("id, path, size, mtime_ns, content_sha256, status, reason, duration, vec, moods, "
                                  "top_mood, genres"):
            ok = r[5] == "ok"
            if ok and not sound_copy(seg, int(r[8])):
                log.warning(f"{run.lib_dir}: {r[1]}: stored embedding is damaged; dropped (embedded again next run)")
                continue
            records.append(NewRecord(r[1], int(r[2]), int(r[3]), r[4], r[5], r[6], r[7],
                                     copy_from=(seg, int(r[8])) if ok else None,
                                     tags=(r[9], r[10], r[11]) if ok else None))
    if not records:
        return None
    merged = run.write(records)
    if group[0].ann is not None and group[0].deleted is None:
        run.ann_seeds[merged.id] = group[0]
    return merged


def _apply_merges(run: BuildRun, refs: list[SegmentRef]) -> list[SegmentRef]:
    """Merge until no group is left; a merged segment takes its first member's place."""
    while True:
        groups = plan_merges(refs)
        if not groups:
            return refs
        for g in groups:
            merged = _merge(run, g)
            ids = {r.id for r in g}
            at = next(i for i, r in enumerate(refs) if r.id in ids)
            rest = [r for r in refs if r.id not in ids]
            refs = rest[:at] + ([merged] if merged is not None else []) + rest[at:]


def merge_new_segments(run: BuildRun) -> None:
    """While building: merge this run's own committed segments by tier, so a long first
    build leaves a logarithmic number of segments (older journal segments may hold
    records this run deletes; they are merged at publication)."""
    if not plan_merges(run.new_since_start):
        return
    old = [r for r in run.journal_segments if r not in run.new_since_start]
    merged = _apply_merges(run, list(run.new_since_start))
    run.new_since_start = merged
    run.journal_segments = old + merged


# -- publishing ---------------------------------------------------------------------------------------
def publish(run: BuildRun, base, base_name, journal, delete: set[tuple[int, int]], precision, root: RootRef,
            damaged: list[str]) -> tuple[bool, str | None, GenerationManifest | None]:
    """Publish the live generation's segments (less ``delete``: (segment id, record id)
    pairs) plus this run's as the next generation; returns (published?, manifest name,
    manifest). Unchanged content publishes nothing and writes nothing."""
    gen_no = (base.generation if base is not None else _max_generation(run.lib_dir)) + 1
    refs: list[SegmentRef] = []
    by_seg: dict[int, list[int]] = defaultdict(list)
    for seg_id, rid in delete:
        by_seg[seg_id].append(rid)
    for ref in [r for r in (base.segments if base else ()) if r.id in run.opened] + run.journal_segments:
        seg = run.opened.get(ref.id) or run.open(ref)
        new_ids = by_seg.get(ref.id)
        if new_ids:
            ids = np.union1d(seg.deleted_ids, np.asarray(new_ids, np.int64))
            n_vec = seg.db.execute("SELECT COUNT(*) FROM records WHERE vec >= 0 AND id IN "
                                   "(SELECT value FROM json_each(?))", (str(ids.tolist()),)).fetchone()[0]
            ref = write_deleted(run.seg_dir, ref, ids, n_vec, gen_no)
            run.bytes_written += ref.deleted.bytes
            run.opened[ref.id] = OpenSegment(run.seg_dir, ref, kind=run.kind, dim=run.dim,
                                             bundle_fingerprint=run.fingerprint)
            seg.close()
        if ref.live_records > 0:
            refs.append(ref)
    refs = _apply_merges(run, refs)
    hub_spec, centre = centre_entry(run, refs)
    refs, ann = ann_entries(run, refs, centre, base)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    m = GenerationManifest(gen_no, run.kind, run.fingerprint, run.bundle.manifest.model.name, run.dim, precision,
                           root, base.created if base else now, now,
                           LOUDNESS_FLOOR_DBFS if run.kind == "music" else None,
                           MAX_TRACK_SECONDS if run.kind == "music" else None,
                           tuple(refs), run.next_segment, hub_spec, ann)
    if base is not None and not damaged and journal is None and not run.journal_segments \
            and m.content_key() == base.content_key():
        collect_unlocked(run.lib_dir)
        return False, base_name, base  # nothing changed: no new generation, nothing written
    name = generation_name(gen_no)
    run.bytes_written += write_json_atomic(run.lib_dir / name, m.to_dict())
    fsync_dir(run.seg_dir)
    run.bytes_written += write_atomic(run.lib_dir / CURRENT_NAME, (name + "\n").encode())  # the commit point
    fsync_dir(run.lib_dir)
    (run.lib_dir / JOURNAL_NAME).unlink(missing_ok=True)
    run.close()  # our own handles must not keep files alive (Windows)
    collect_unlocked(run.lib_dir)
    return True, name, m


def _max_generation(lib_dir: Path) -> int:
    nums = [int(m.group(1)) for p in lib_dir.iterdir() if (m := GEN_RE.match(p.name) or OLD_GEN_RE.match(p.name))]
    return max(nums, default=0)


def centre_entry(run: BuildRun, refs: list[SegmentRef]) -> tuple[HubSpec | None, np.ndarray | None]:
    """The generation's centre (mean of its live pooled rows, a read of every row) and its
    manifest entry; the file is named by its content, so an unchanged library names the
    same file and writes nothing."""
    if not run.centring:
        return None, None
    blocks = []
    for ref in refs:
        seg = run.open(ref)
        blocks.append(seg.pooled if seg.live_vecs is None else seg.pooled[seg.live_vecs])
    centre, count = hubs.centre_of(blocks)
    if count < hubs.MIN_TRACKS:
        return None, None
    data = centre.tobytes()
    name = f"centre-{hashlib.sha256(data).hexdigest()[:16]}.npy"
    path = run.seg_dir / name
    if not path.is_file():
        write_vector_file(run.seg_dir, name, centre)
        run.bytes_written += path.stat().st_size
    return HubSpec(hubs.METHOD, FileRef(name, path.stat().st_size, sha256_file(path)), count,
                   hubs.MIN_CENTRED_NORM), centre


def _ann_key(centre: np.ndarray | None, dim: int) -> str:
    # The kind and its size are in the key: a library indexed by a version that built
    # another kind gets the current one at its next update.
    m, _k_factor = ann_params(dim)
    return f"{search_index.ANN_KIND}-m{m}-{'centred' if centre is not None else 'raw'}"


def _extend_seed(run: BuildRun, ref: SegmentRef, key: str, centre: np.ndarray | None, path: Path) -> bool:
    """Build a merged segment's index from its first member's: copy it and add the other
    rows (True), rather than build the graph again; False when there is no usable seed."""
    from ..search import FaissIndex
    from .hubs import centred_rows

    seed = run.ann_seeds.get(ref.id)
    if seed is None or seed.ann_key != key or not (run.seg_dir / seed.ann.name).is_file():
        return False
    idx = FaissIndex.load(run.seg_dir / seed.ann.name)
    if len(idx) != seed.vectors:
        return False
    pooled = run.open(ref).pooled
    for lo in range(seed.vectors, ref.vectors, 1 << 16):
        idx.index.add(np.ascontiguousarray(centred_rows(np.asarray(pooled[lo:lo + (1 << 16)]), centre)))
    idx.save(path)
    return True


def ann_entries(run: BuildRun, refs: list[SegmentRef], centre: np.ndarray | None,
                base) -> tuple[list[SegmentRef], AnnSpec | None]:
    """FAISS indexes for large segments (built now, at index time, for segments that lack
    one of the right kind; a merged segment extends its largest member's; a segment keeps
    its index when the centre moves, candidates are rescored exactly), and recall@10
    against exact search."""
    from ..search import FaissIndex, faiss_available

    if not faiss_available() or sum(r.live_vectors for r in refs) < search_index.ANN_BUILD_FROM:
        return [replace(r, ann=None, ann_key="") if r.ann is not None else r for r in refs], None
    key = _ann_key(centre, run.dim)
    out, built = [], False
    for ref in refs:
        if ref.vectors < search_index.ANN_MIN_SEGMENT_ROWS:
            out.append(replace(ref, ann=None, ann_key="") if ref.ann is not None else ref)
            continue
        if ref.ann is None or ref.ann_key != key:
            name = f"{segment_prefix(ref.id)}.{key}.faiss"
            if not _extend_seed(run, ref, key, centre, run.seg_dir / name):
                build_ann(run.open(ref).pooled, centre, run.seg_dir / name)
            p = run.seg_dir / name
            f = FileRef(name, p.stat().st_size, sha256_file(p))
            run.bytes_written += f.bytes
            ref = replace(ref, ann=f, ann_key=key)
            built = True
        out.append(ref)
    if not any(r.ann is not None for r in out):
        return out, None
    if not built and base is not None and base.ann is not None and base.ann.recall_at_10 is not None \
            and [(r.id, r.ann, r.deleted) for r in out] == [(r.id, r.ann, r.deleted) for r in base.segments]:
        return out, base.ann  # same indexes over the same rows: the measured recall stands
    from .hubs import inverse_norms

    parts = []
    base_row = 0
    for ref in out:
        seg = run.open(ref)
        ann = FaissIndex.load(run.seg_dir / ref.ann.name) if ref.ann is not None else None
        inv = None if centre is None else inverse_norms(seg.pooled, centre)
        parts.append(IndexPart(seg.pooled, inv, seg.deleted_vecs, base_row, ann))
        base_row += seg.live_count
    index = SegmentedIndex(parts, run.dim, centre)
    queries = recall_queries(index)
    recall = measure_recall(index, queries, 10)
    m, k_factor = ann_params(run.dim)
    return out, AnnSpec(search_index.ANN_KIND, m, k_factor, search_index.ANN_MIN_SEGMENT_ROWS, round(recall, 4),
                        len(queries))
