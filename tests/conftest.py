"""Shared fixtures: tiny random-weight models of each supported family, built in-process."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

FAMILIES = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
}


def tiny_model(family: str = "llama", layers: int = 6, window: int = 64, seed: int = 0, **overrides):
    """A random-weight decoder with GQA (4 query heads, 2 kv heads)."""
    torch.manual_seed(seed)
    config = FAMILIES[family](
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        **overrides,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


@pytest.fixture(params=list(FAMILIES))
def family_model(request):
    return tiny_model(request.param)


@pytest.fixture
def llama():
    return tiny_model("llama")


def random_ids(n: int, seed: int, low: int = 3, high: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n,), generator=g)


def tiny_tokenizer():
    """A character-level tokenizer (vocab < 128) with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    """The app-level tests' model: a tiny random Llama with a 1 024-token window and the
    character tokenizer, named "tiny", with its fingerprint: ``model, tokenizer, fingerprint``
    (one per test module: a test may leave state on the model)."""
    from homer.fingerprint import model_fingerprint

    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    model.homer_name = "tiny"
    return model, tokenizer, model_fingerprint(model)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny model + tokenizer saved as a local folder (the ``--model FOLDER`` path)."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama", window=1024).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def configure():
    """Change the app's settings for one test, as ``Settings.changed`` takes them:
    ``configure(answering={"focus": "cache"})``; the process's settings come back after it
    (:mod:`app.settings`: the app reads them once, so a test sets them, not the environment)."""
    from app.settings import load_settings, use_settings

    saved = load_settings()

    def change(**sections):
        settings = load_settings().changed(**sections)
        use_settings(settings)
        return settings

    yield change
    use_settings(saved)


# --- markers: a test that starts another process is "e2e", wherever the process comes from ----
# (its own body is marked by hand; here: the fixtures it uses, however deep). Deselect both for the
# inner loop: ``pytest -m "not slow and not e2e"``.
STARTS_A_PROCESS = re.compile(
    r"running_app|Popen|start_worker|redis-server|weed_binary|seaweedfs|s3_location|"
    r"system_chromium|subprocess\.run"
)
_starts: dict = {}


def _fixture_starts_a_process(definition) -> bool:
    func = definition.func
    if func not in _starts:
        try:
            _starts[func] = bool(STARTS_A_PROCESS.search(inspect.getsource(func)))
        except (OSError, TypeError):
            _starts[func] = False
    return _starts[func]


def pytest_collection_modifyitems(config, items):
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("e2e"):
            continue
        if any(_fixture_starts_a_process(d) for defs in info.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.e2e)
