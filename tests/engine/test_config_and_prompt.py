"""Defaults derived from the model, and the document prompt layouts."""

import pytest
from conftest import tiny_model, tiny_tokenizer

from homer import Conversation, DocumentPrompt, HomerConfig, build_document_cache
from homer.prompting import DOC


def test_defaults_come_from_the_model():
    model = tiny_model("llama", layers=8, window=256)
    cfg = HomerConfig().resolve(model.config)
    assert (cfg.max_chunk_len, cfg.target_len, cfg.warmup_layers) == (128, 128, 3)
    custom = HomerConfig(max_chunk_len=64, target_len=48, warmup_layers=1).resolve(model.config)
    assert (custom.max_chunk_len, custom.target_len, custom.warmup_layers) == (64, 48, 1)


def test_rope_scaling_multiplies_the_window():
    model = tiny_model(
        "llama",
        window=256,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "rope_theta": 10000.0,
            "original_max_position_embeddings": 256,
        },
    )
    assert HomerConfig().resolve(model.config).max_chunk_len == 512


def test_chat_layout_splits_around_the_document():
    tok = tiny_tokenizer()
    prefix, suffix, tail = DocumentPrompt().split(tok)
    assert prefix.startswith("<|im_start|>user\n") and "document" in suffix
    assert tail == "<|im_end|>\n<|im_start|>assistant\n"
    _, with_question, nothing = DocumentPrompt().split(tok, question="Why?")
    assert with_question.endswith("Why?<|im_end|>\n<|im_start|>assistant\n") and nothing == ""
    rendered = DocumentPrompt(system="Be brief.").render(tok, [("A?", "a")], "B?")
    assert rendered.startswith("<|im_start|>system\nBe brief.") and rendered.count(DOC) == 1


def test_completion_layout_for_tokenizers_without_a_chat_template():
    tok = tiny_tokenizer()
    tok.chat_template = None
    model = tiny_model("llama", window=1024)
    cache = build_document_cache(model, tok, "Bob lives in Rome. " * 40, HomerConfig(significance="uncalibrated"))
    conv = Conversation(cache, model, tok)
    assert conv.prompt.style == "completion"
    list(conv.ask("Where?", max_new_tokens=3))
    list(conv.ask("Who?", max_new_tokens=3))
    assert len(conv.turns) == 2 and conv.rebuilds == 0  # the second turn was appended, not re-encoded
    assert conv.text.endswith("\n\nQuestion: Who?\nAnswer:" + conv.turns[1][1])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="cache_dtype"):
        HomerConfig(cache_dtype="int4")
    with pytest.raises(ValueError, match="pool_width"):
        HomerConfig(pool_width=-1)
    with pytest.raises(ValueError, match="warmup_layers"):
        HomerConfig(warmup_layers=40).resolve(tiny_model("llama").config)
