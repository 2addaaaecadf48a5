"""The data of the page's kernel explorer: every kernel, or a stated stratified sample.

The explorer (``assets/explorer.js``) draws kernels from one JSON document embedded in the
page: per-layer facts once (source, layer name, index, size, depth), then one column per
per-kernel field (typed arrays, base64) and the weights at 8-bit precision (each kernel
scaled to its own largest |weight|, which is kept). Above :data:`EXPLORER_LIMIT` kernels
the page holds a stratified sample: every layer keeps the same share of its kernels (at
least :data:`MIN_PER_LAYER`, or all it has), drawn uniformly at random with the run's seed;
the page says so. kernels.parquet is read in batches (bounded memory).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..taxonomy import PATTERN_FAMILIES

__all__ = [
    "EXPLORER_LIMIT",
    "MIN_PER_LAYER",
    "KERNEL_COLUMNS",
    "layer_quotas",
    "explorer_payload",
]

EXPLORER_LIMIT = 100_000
MIN_PER_LAYER = 64
# Per-kernel columns the explorer shows and the CSV download holds (those present), with
# their encoding: f32, i32, i8, bool, or cat (strings as codes into a dictionary).
KERNEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("row", "i32"),
    ("channel", "i32"),
    ("nonfinite", "bool"),
    ("family", "cat"),
    ("shape", "cat"),
    ("orientation", "f32"),
    ("polarity", "i8"),
    ("scale", "f32"),
    ("score", "f32"),
    ("classified", "bool"),
    ("fit_family", "cat"),
    ("fit_r2", "f32"),
    ("fit_sigma", "f32"),
    ("fit_orientation", "f32"),
    ("ae_latent", "f32"),
    ("ae_distance", "f32"),
    ("ae_family", "cat"),
    ("ae_classified", "bool"),
)
_LAYER_KEY = ["source", "layer_index", "layer"]
_DTYPES = {"f32": "<f4", "i32": "<i4", "i8": "i1", "bool": "u1"}


def _columns(names: Sequence[str]) -> list[tuple[str, str]]:
    scores = [(f"score_{f}", "f32") for f in PATTERN_FAMILIES]
    return [(c, enc) for c, enc in (*KERNEL_COLUMNS, *scores) if c in names or c == "row"]


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _layer_codes(batch: pa.RecordBatch, key_code: dict[tuple[str, int, str], int]) -> np.ndarray:
    """The layer number (index into summary.json's layers) of every row of a batch whose
    ``source`` and ``layer`` are dictionary-encoded; -1 for a row of no listed layer. Works
    on the codes: only the distinct (source, layer index, layer) of the batch are looked up."""
    src, lay = (
        c if pa.types.is_dictionary(c.type) else c.dictionary_encode()
        for c in (batch.column("source"), batch.column("layer"))
    )
    li = batch.column("layer_index").to_numpy(zero_copy_only=False).astype(np.int64)
    si = src.indices.fill_null(-1).to_numpy().astype(np.int64)
    lj = lay.indices.fill_null(-1).to_numpy().astype(np.int64)
    lo = int(li.min())
    span = int(li.max()) - lo + 1
    combo, uniq = pd.factorize(((si + 1) * (len(lay.dictionary) + 1) + lj + 1) * span + li - lo)
    s_names, l_names = src.dictionary.to_pylist(), lay.dictionary.to_pylist()
    lut = np.full(len(uniq), -1, np.int64)
    for u, v in enumerate(uniq.tolist()):  # distinct layers of the batch, not kernels
        rest, i = divmod(v, span)
        a, b = divmod(rest, len(lay.dictionary) + 1)
        if a and b:
            lut[u] = key_code.get((s_names[a - 1], i + lo, l_names[b - 1]), -1)
    return lut[combo]


def _decoded(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with its dictionary-encoded columns as plain strings (kept rows only)."""
    return pa.RecordBatch.from_arrays(
        [c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in batch.columns],
        names=batch.schema.names,
    )


def layer_quotas(counts: np.ndarray, limit: int, min_per_layer: int = MIN_PER_LAYER) -> np.ndarray:
    """Kernels kept per layer: all when the total is within ``limit``; otherwise the same
    share ``s`` of every layer, at least ``min_per_layer`` (or all it has), with ``s`` the
    largest share whose total stays within ``limit`` (bisection over ``s``)."""
    n = np.asarray(counts, dtype=np.int64)
    if n.sum() <= limit:
        return n.copy()
    floor = np.minimum(n, min_per_layer)

    def take(s: float) -> np.ndarray:
        return np.maximum(floor, np.floor(s * n).astype(np.int64))

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if take(mid).sum() <= limit:
            lo = mid
        else:
            hi = mid
    return take(lo)


def explorer_payload(
    path: Path,
    summary: dict[str, Any],
    *,
    labels: dict[str, str],
    limit: int = EXPLORER_LIMIT,
    min_per_layer: int = MIN_PER_LAYER,
    seed: int = 0,
    batch_size: int = 65_536,
    stash: dict[str, Any] | None = None,
    extra_rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """The explorer's JSON document for the analysis whose kernels.parquet is ``path`` (a
    file or a folder of parts; the kept kernels' weights are read through
    :func:`kernelatlas.results.kernel_weights`).

    ``stash``: a dict that receives the kept kernels as read (for other figures of the page,
    so that nothing reads the bank twice): ``row`` (table rows), ``layer`` (indices into
    ``layers``, the layer rows in page order), each per-kernel column, and ``weights``:
    (kh, kw) -> (positions among the kept, float32 [n, kh, kw]); ``extra``: the weights of
    ``extra_rows`` (other table rows a page needs, read in the same pass over the bank),
    (kh, kw) -> (table rows, float32 [n, kh, kw]).
    """
    from ..results import BANK_REF_COLUMNS, kernel_weights, kernels_dataset

    layers = pd.DataFrame(summary["layers"])
    if not len(layers):
        layers = pd.DataFrame(columns=[*_LAYER_KEY, "model", "kh", "kw", "depth", "kernels"])
    sources = list(dict.fromkeys(layers["source"]))
    # network order within each source (the page's layer menu lists them in this order)
    order = layers["source"].map({s: i for i, s in enumerate(sources)})
    layers = (
        layers.assign(_src=order, _idx=pd.to_numeric(layers["layer_index"]))
        .sort_values(["_src", "_idx"], kind="stable")
        .drop(columns=["_src", "_idx"])
        .reset_index(drop=True)
    )
    src_code = {s: i for i, s in enumerate(sources)}
    counts = layers["kernels"].to_numpy(dtype=np.int64)
    quotas = layer_quotas(counts, limit, min_per_layer)
    total = int(counts.sum())
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    keep_flat = np.zeros(total, dtype=bool)
    for i, (n, q) in enumerate(zip(counts, quotas)):  # layers, not kernels
        if q >= n:
            keep_flat[offsets[i] : offsets[i + 1]] = True
        elif q > 0:
            keep_flat[offsets[i] + rng.choice(n, int(q), replace=False)] = True

    dataset = kernels_dataset(path)
    cols = _columns(dataset.schema.names)
    refs = ["weights"] if "weights" in dataset.schema.names else list(BANK_REF_COLUMNS)
    read = list(
        dict.fromkeys([*_LAYER_KEY, "kh", "kw", *[c for c, _ in cols if c != "row"], *refs])
    )
    # strings read as codes into each row group's dictionary (a few bytes a row, never a
    # Python object per kernel); one batch at a time (bounded memory)
    strings = [c for c in read if pa.types.is_string(dataset.schema.field(c).type)
               or pa.types.is_large_string(dataset.schema.field(c).type)]  # fmt: skip
    key_code = {
        (str(s), int(i), str(name)): k
        for k, (s, i, name) in enumerate(zip(layers["source"], layers["layer_index"], layers["layer"]))
    }  # fmt: skip
    seen = np.zeros(len(layers), dtype=np.int64)
    parts: dict[str, list[np.ndarray]] = {c: [] for c, _ in cols}
    codes: list[np.ndarray] = []
    w_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (kept positions, q, peak)
    row0 = kept_n = 0
    raw: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    extra = np.unique(np.asarray([] if extra_rows is None else extra_rows, dtype=np.int64))
    extra_w: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    # file by file, batch by batch, synchronously: a dataset scanner reads ahead of a slow
    # consumer without bound (at 10M kernels it buffered ~760 MB of batches here)
    batches = (
        b
        for f in dataset.files
        for b in pq.ParquetFile(f, read_dictionary=strings).iter_batches(
            batch_size=batch_size, columns=read
        )
    )
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        code = _layer_codes(batch, key_code)
        known = code >= 0
        c = np.where(known, code, 0)
        pos = pd.Series(c).groupby(c).cumcount().to_numpy() + seen[c]
        seen += np.bincount(c[known], minlength=len(layers))
        flat = np.minimum(offsets[c] + pos, max(total - 1, 0))
        keep = known & (pos < counts[c]) & keep_flat[flat] if total else known & False
        idx = np.flatnonzero(keep)
        ex = extra[(extra >= row0) & (extra < row0 + n)] - row0 if extra.size else extra
        row0 += n
        if not len(idx) and not len(ex):
            continue
        fetch = np.union1d(idx, ex) if len(ex) else idx  # one bank read for both
        fsub = _decoded(batch.take(pa.array(fetch)))
        kh = fsub.column("kh").to_numpy()
        kw = fsub.column("kw").to_numpy()
        in_keep = np.isin(fetch, idx)
        if len(idx):
            sub = fsub.take(pa.array(np.flatnonzero(in_keep))) if len(ex) else fsub
            parts["row"].append(row0 - n + idx)
            codes.append(c[idx])
            for name, _enc in cols:
                if name != "row":
                    parts[name].append(sub.column(name).to_numpy(zero_copy_only=False))
        for a, b in sorted(set(zip(kh.tolist(), kw.tolist()))):  # kernel sizes
            at = np.flatnonzero((kh == a) & (kw == b))
            wf = kernel_weights(path, fsub.take(pa.array(at))).reshape(len(at), -1)
            mine = in_keep[at]
            if len(ex) and (~mine).any():
                extra_w.setdefault((a, b), []).append((row0 - n + fetch[at[~mine]], wf[~mine].reshape(-1, a, b)))  # fmt: skip
            if not mine.any():
                continue
            sel = np.searchsorted(idx, fetch[at[mine]])  # positions among this batch's kept
            w = wf[mine]
            if stash is not None:
                raw.setdefault((a, b), []).append((kept_n + sel, w.reshape(len(sel), a, b)))
            w = np.where(np.isfinite(w), w, 0.0)
            peak = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(len(sel))
            q = np.round(w / np.where(peak > 0, peak, 1.0)[:, None] * 127).astype(np.int8)
            w_parts.append((kept_n + sel, q, peak))
        kept_n += len(idx)
    if stash is not None:
        stash["row"] = np.concatenate(parts["row"]) if parts["row"] else np.zeros(0, np.int64)
        stash["layer"] = np.concatenate(codes) if codes else np.zeros(0, np.int64)
        stash["layers"] = layers
        for name, _enc in cols:
            if name != "row":
                stash[name] = np.concatenate(parts[name]) if parts[name] else np.zeros(0)
        stash["weights"] = {
            size: (np.concatenate([p for p, _ in v]), np.concatenate([w for _, w in v]))
            for size, v in raw.items()
        }
        stash["extra"] = {
            size: (np.concatenate([r for r, _ in v]), np.concatenate([w for _, w in v]))
            for size, v in extra_w.items()
        }
    kept = kept_n

    peak = np.zeros(kept, np.float32)
    layer_code = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    sizes = (layers["kh"].to_numpy(dtype=np.int64) * layers["kw"].to_numpy(dtype=np.int64)) if len(layers) else np.zeros(0, np.int64)  # fmt: skip
    woff = np.concatenate([[0], np.cumsum(sizes[layer_code])]).astype(np.int64)
    weights = np.zeros(int(woff[-1]), np.int8)
    for pos_k, q, pk in w_parts:  # one block per (batch, size)
        peak[pos_k] = pk
        weights[woff[pos_k][:, None] + np.arange(q.shape[1])[None, :]] = q
    out_cols: dict[str, Any] = {}
    for name, enc in cols:
        vals = np.concatenate(parts[name]) if parts[name] else np.zeros(0)
        if enc == "cat":
            s = pd.Series(vals, dtype=object).fillna("")
            cat = pd.Categorical(s)
            out_cols[name] = {"type": "u8" if len(cat.categories) < 256 else "u16",
                              "dict": [str(x) for x in cat.categories],
                              "data": _b64(cat.codes.astype("u1" if len(cat.categories) < 256 else "<u2"))}  # fmt: skip
        else:
            arr = np.asarray(vals, dtype=float if enc == "f32" else None)
            if enc == "bool":
                arr = np.asarray(vals, dtype=bool)
            out_cols[name] = {"type": enc, "data": _b64(arr.astype(_DTYPES[enc]))}
    out_cols["layer"] = {"type": "u32", "data": _b64(layer_code.astype("<u4"))}
    out_cols["peak"] = {"type": "f32", "data": _b64(peak.astype("<f4"))}
    sampled = kept < total
    frac = kept / total if total else 1.0
    if sampled:
        text = (
            f"a stratified sample of {kept:,} of the {total:,} kernels (the page holds at most "
            f"{limit:,}): every layer keeps the same share of its kernels (about {100 * frac:.0f}%), "
            f"at least {min_per_layer} or all it has, drawn uniformly at random (seed {seed}); "
            "kernels.parquet holds every kernel"
        )
    else:
        text = f"every kernel of the run ({kept:,})"
    return {
        "n": kept,
        "total": total,
        "limit": int(limit),
        "sampled": bool(sampled),
        "sampling": text,
        "seed": int(seed),
        "sources": [
            {
                "source": s,
                "model": str(layers.loc[layers["source"] == s, "model"].iloc[0]),
                "label": labels.get(s, s),
            }
            for s in sources
        ],  # fmt: skip
        "layers": {
            "source": [src_code[s] for s in layers["source"]],
            "layer": [str(x) for x in layers["layer"]],
            "layer_index": [int(x) for x in layers["layer_index"]],
            "kh": [int(x) for x in layers["kh"]],
            "kw": [int(x) for x in layers["kw"]],
            "depth": [float(x) for x in layers["depth"]],
            "kernels": [int(x) for x in counts],
            "kept": [int(x) for x in np.bincount(layer_code, minlength=len(layers))]
            if len(layers)
            else [],
        },  # fmt: skip
        "columns": out_cols,
        "weights": _b64(weights),
    }
