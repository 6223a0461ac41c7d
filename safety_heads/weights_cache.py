"""A low-bit runtime's weights built once from the GGUF and kept on disk, so that later starts take seconds.

A cache folder is keyed by the GGUF's sha256, the runtime's name and `FORMAT`; it holds the config, the
tokenizer, the state dict (`weights.safetensors`) and a manifest written last, with the sha256 of the
weights. It is written to a temporary folder and renamed into place, so a folder under its final name is
complete; one whose manifest or weights do not check out is rebuilt, never used.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from gguf import MODEL_ARCH_NAMES, GGUFReader, get_tensor_name_map
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.initialization import no_init_weights
from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

from .gguf_blocks import AffineGroups, decode
from .packaged import cache_dir, sha256_file
from .runtime import LowBit, Runtime, empty_like_plan, plan_of, replace_modules, swap_linears

FORMAT = 2  # bump when what a cache folder holds changes; older folders are then rebuilt
WEIGHTS, MANIFEST = "weights.safetensors", "manifest.json"


def cache_folder(gguf_sha256: str, runtime: str) -> Path:
    return cache_dir() / "runtime" / f"{gguf_sha256}-{runtime}-v{FORMAT}"


def convert(model: PreTrainedModel, gguf: Path, runtime: Runtime) -> dict[str, LowBit]:
    """Swap every linear layer of the float32 model loaded from `gguf` for the runtime's low-bit layer,
    built from the file's own blocks where they come in groups of 32. Returns the new layers by name."""
    reader = GGUFReader(gguf)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=model.config.to_dict())
    gguf_arch = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
    names = get_tensor_name_map(gguf_arch, model.config.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    embedding = model.get_input_embeddings()

    def groups_of(name: str, linear: nn.Linear) -> AffineGroups | None:
        # A tied output layer has no tensor of its own: it is the embedding's.
        tied = linear.weight is embedding.weight
        tensor = tensors.get(f"{names.get_name('model.embed_tokens' if tied else name)}.weight")
        if tensor is None:
            return None
        groups = decode(tensor.data, tensor.tensor_type, *linear.weight.shape)
        if groups is None:
            return None
        # The loader reorders some rows (Llama's q and k): the codes follow the same order.
        groups = groups.permute_rows(lambda a: processor.process(weights=a, name=tensor.name).weights)
        if not np.array_equal(groups.dequantize(), linear.weight.detach().numpy()):
            raise RuntimeError(f"{name}: the GGUF's blocks do not give the loaded weights")
        return groups

    return swap_linears(model, runtime, groups_of)


def save(folder: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, new: dict[str, LowBit]) -> None:
    """Write the cache folder atomically (a temporary folder, then a rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS)
        manifest = {
            "format": FORMAT,
            "plan": {name: plan_of(m) for name, m in new.items()},
            "weights_sha256": sha256_file(tmp / WEIGHTS),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        # Another process may have renamed its copy into place first; either copy is complete.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / MANIFEST).is_file():
            raise


def load(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | None:
    """The model and tokenizer from a cache folder, or None when it is absent, stale or damaged."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT or sha256_file(folder / WEIGHTS) != manifest["weights_sha256"]:
            return None
        config = AutoConfig.from_pretrained(folder)
        with no_init_weights():  # every parameter comes from the file
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        modules = empty_like_plan(manifest["plan"])
        replace_modules(model, modules)
        model.generation_config = GenerationConfig.from_pretrained(folder)
        model.load_state_dict(load_file(folder / WEIGHTS), strict=True)
        for module in modules.values():
            module.pack()
        return model, AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError):
        return None


def load_or_build(
    gguf: Path,
    gguf_sha256: str,
    runtime: Runtime,
    load_float32: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]],
    report: Callable[[str], None],
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The runtime's model: from its cache folder, or built from the float32 model and cached.
    `report` hears each stage (the app shows them while a first start takes its minutes)."""
    folder = cache_folder(gguf_sha256, runtime.name)
    report(f"reading the cached {runtime.name} weights")
    cached = load(folder)
    if cached is not None:
        return cached
    report("first start: dequantizing the GGUF (about 2 minutes on 2 cores; later starts take seconds)")
    model, tokenizer = load_float32()
    report(f"first start: building the {runtime.name} weights from the GGUF's blocks")
    new = convert(model, gguf, runtime)
    report("first start: writing the cache")
    save(folder, model, tokenizer, new)
    for older in folder.parent.glob(f"{gguf_sha256}-{runtime.name}-v*"):  # earlier formats: never read again
        if older != folder and ".tmp-" not in older.name:  # another process's copy in the making is its own
            shutil.rmtree(older, ignore_errors=True)
    return model, tokenizer
