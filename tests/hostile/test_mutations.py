"""Truncated, bit-flipped, empty, wrong-extension and directory inputs for every reader:
each ends in a KernelAtlasError with a one-line message, or in a correct result.

The mutated files are read in a child process (``worker.run_batch``) so that a segfault or
a hang in a parser is reported as such, with the file that caused it, instead of killing
the test run. Keras files are read there without the reader's own fork isolation (fast);
any that crash the child must then be contained by the real reader (``harvest``).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from pathlib import Path

import pytest

from kernelatlas.errors import FormatError, KernelAtlasError
from kernelatlas.harvest import harvest

from .makers import SEED_NAMES, bitflips, truncations
from .worker import run_batch

N_CUTS = 30  # truncation points per reader
N_FLIPS = 40  # bit-flipped copies per reader (4 bits each, seeded)
SEED = 20240607
_OWN_ERRORS = ("FormatError", "UnsafeFileError", "TensorTooLargeError", "KernelAtlasError")


@pytest.fixture(scope="module")
def mutated(seeds, tmp_path_factory) -> dict[str, list[tuple[str, Path]]]:
    root = tmp_path_factory.mktemp("mutated")
    out: dict[str, list[tuple[str, Path]]] = {}
    for i, (key, seed) in enumerate(sorted(seeds.items())):
        data = seed.read_bytes()
        folder = root / key
        folder.mkdir()
        for shard in seed.parent.glob("*.bin") if key.startswith("tfjs") else ():
            shutil.copy(shard, folder / shard.name)  # mutated manifests, intact shards
        cases = [("cut", *c) for c in truncations(data, N_CUTS)]
        cases += [("flip", *c) for c in bitflips(data, N_FLIPS, SEED + i)]
        cases.append(("empty", "empty", b""))
        out[key] = []
        for kind, tag, blob in cases:
            p = folder / f"{tag}{seed.suffix}"
            p.write_bytes(blob)
            if key in ("openvino", "ncnn"):  # mutated .xml/.param, the intact .bin beside each
                shutil.copy(seed.with_suffix(".bin"), p.with_suffix(".bin"))
            out[key].append((kind, p))
    return out


@pytest.mark.timeout(240)
def test_truncated_flipped_empty_files_fail_safely(mutated, reference, tmp_path):
    files = [p for cases in mutated.values() for _, p in cases]
    outcomes = {o.file: o for o in run_batch(files, per_file_s=30, total_s=200)}
    stats: dict[str, collections.Counter] = {}
    problems = []
    for key, cases in mutated.items():
        c = stats.setdefault(key, collections.Counter())
        for kind, p in cases:
            o = outcomes[str(p)]
            if o.kind == "crash" and key.startswith("keras"):
                # the child read libhdf5 unguarded; the real reader must contain the crash
                with pytest.raises(FormatError, match="crashed"):
                    harvest(p)
                c["contained_crash"] += 1
                continue
            c[f"{kind}:{o.kind}"] += 1
            if o.kind == "error":
                if not (o.detail.split(":")[0] in _OWN_ERRORS and o.one_line):
                    problems.append((key, p.name, o.detail))
            elif o.kind == "ok":
                if kind in ("cut", "empty") and o.detail != reference[key]:
                    problems.append((key, p.name, f"wrong result {o.detail}"))
                if o.detail.startswith("MALFORMED"):
                    problems.append((key, p.name, o.detail))
            else:
                problems.append((key, p.name, f"{o.kind}: {o.detail}"))
    (tmp_path / "stats.json").write_text(json.dumps(stats, indent=1))
    if os.environ.get("KERNELATLAS_HOSTILE_STATS"):
        Path(os.environ["KERNELATLAS_HOSTILE_STATS"]).write_text(json.dumps(stats, indent=1))
    assert not problems, problems[:10]
    # every reader saw both outcomes at least once: the battery exercises real parsing
    for key, c in stats.items():
        assert sum(v for k, v in c.items() if k.endswith(":error")) > 0, (key, c)
    assert sum(c["cut:error"] for c in stats.values()) > 200


@pytest.mark.parametrize("key", sorted(SEED_NAMES))
def test_directory_and_wrong_extension(key, seeds, tmp_path):
    seed = seeds[key]
    # a directory named like a model file
    d = tmp_path / seed.name
    d.mkdir()
    with pytest.raises(FormatError, match="is a directory"):
        harvest(d)
    # the right bytes behind a wrong or missing extension: the content decides, or a
    # one-line error says what is wrong
    for suffix in (".txt", "", ".onnx", ".tflite", ".npy"):
        if suffix == seed.suffix:
            continue
        p = tmp_path / f"renamed{suffix}"
        shutil.copy(seed, p)
        try:
            res = harvest(p)
        except KernelAtlasError as exc:
            assert "\n" not in str(exc) and str(p) in str(exc)
        else:
            want = harvest(seed).layers
            assert len(res.layers) == len(want)
            for a, b in zip(res.layers, want, strict=True):
                assert (a.weights == b.weights).all()


CORPUS = sorted((Path(__file__).parent / "corpus").iterdir())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_regression_corpus(path, monkeypatch):
    """Inputs that once crashed a reader (saved by the battery and the fuzzer); read in
    process: the Keras reader's fork must contain a libhdf5 segfault or endless loop."""
    from kernelatlas.harvest import keras_h5

    monkeypatch.setattr(keras_h5, "_time_limit", lambda p: 5.0)  # libhdf5 loops: 60 s default
    try:
        res = harvest(path)
    except KernelAtlasError as exc:
        msg = str(exc)
        assert msg.strip() and "\n" not in msg and str(path) in msg
    else:
        assert all(lk.weights.dtype.name == "float32" and lk.weights.ndim == 3 for lk in res.layers)


@pytest.mark.parametrize("key", ["tfjs", "tfjs_layers"])
def test_tfjs_truncated_and_flipped_shards(key, seeds, tmp_path):
    """A TF.js model is several files: cut or flip its shards (the manifest intact). A cut
    shard never matches the manifest's sizes (one-line refusal); a flipped one reads as
    other numbers or a one-line error. Pure Python: read in process."""
    seed = seeds[key]
    shards = sorted(seed.parent.glob("*.bin"))
    shards = sorted({shards[0], shards[len(shards) // 2], shards[-1]})  # first, middle, last
    outcomes = collections.Counter()
    for i, shard in enumerate(shards):
        data = shard.read_bytes()
        cases = [("cut", *c) for c in truncations(data, 8)]
        cases += [("flip", *c) for c in bitflips(data, 8, SEED + i)]
        for kind, tag, blob in cases:
            folder = tmp_path / f"{shard.stem}-{tag}"
            shutil.copytree(seed.parent, folder)
            (folder / shard.name).write_bytes(blob)
            try:
                res = harvest(folder)
            except KernelAtlasError as exc:
                assert "\n" not in str(exc) and str(folder) in str(exc)
                outcomes[f"{kind}:error"] += 1
                if kind == "cut":
                    assert "shards hold" in str(exc)
            else:
                assert kind == "flip", (shard.name, tag)
                assert all(lk.weights.dtype == "float32" for lk in res.layers)
                outcomes[f"{kind}:ok"] += 1
    assert outcomes["cut:error"] > 0 and outcomes["flip:ok"] > 0
