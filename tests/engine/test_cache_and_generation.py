"""Cache file round-trip, model checks, re-rotation (method §7) and chat continuation."""

import pytest
import torch
from conftest import random_ids, tiny_model

from homer import CacheMismatchError, Conversation, HomerCache, HomerConfig, build_cache, build_document_cache
from homer.generation import DecodeState, GenerationSettings, generate_tokens

P, S = 3, 2
CFG = HomerConfig(significance="uncalibrated", cache_dtype="float32")


@pytest.fixture
def chat_model():
    """Room for a character-level chat prompt: window 1024 → M = 512."""
    return tiny_model("llama", window=1024)


@pytest.fixture
def built(llama):
    return build_cache(llama, random_ids(P, 1), random_ids(200, 2), random_ids(S, 3), CFG)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_save_load_round_trip_is_bit_exact(llama, tmp_path, dtype):
    cache = build_cache(
        llama,
        random_ids(P, 1),
        random_ids(200, 2),
        random_ids(S, 3),
        HomerConfig(significance="uncalibrated", cache_dtype=dtype),
    )
    path = cache.save(tmp_path / "doc.homer.safetensors")
    loaded = HomerCache.load(path, model=llama)
    for name, tensor in cache.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    assert loaded.keys.dtype == getattr(torch, dtype)
    assert loaded.metadata == cache.metadata
    assert (loaded.prefix_len, loaded.suffix_len) == (P, S)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_loading_a_cache_of_another_model_fails_clearly(built, tmp_path):
    path = built.save(tmp_path / "doc.homer.safetensors")
    other = tiny_model("llama", seed=1)
    with pytest.raises(CacheMismatchError, match="was built by model"):
        HomerCache.load(path, model=other)


def test_truncated_or_foreign_files_fail_clearly(built, tmp_path):
    path = built.save(tmp_path / "doc.homer.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheMismatchError, match="cannot be read"):
        HomerCache.load(path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CacheMismatchError, match="not a HOMER cache"):
        HomerCache.load(tmp_path / "other.safetensors")


def test_rerotated_cache_with_stock_generate_matches_explicit_positions(llama, built):
    question = random_ids(5, 4)
    state = DecodeState(kv=built.to_dynamic_cache(rerotate=False), position=built.next_position)
    explicit = list(generate_tokens(llama, state, question.tolist(), GenerationSettings(max_new_tokens=12), set()))

    kv = built.to_dynamic_cache()  # keys rotated so that positions are contiguous
    ids = torch.cat([built.token_ids, question]).view(1, -1)
    with torch.no_grad():
        out = llama.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            past_key_values=kv,
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
        )
    assert out[0, ids.shape[1] :].tolist() == explicit


def test_first_new_token_goes_at_last_position_plus_one(llama, built):
    """Same logits as feeding the question at last_position + 1 by hand (no off-by-one)."""
    question = random_ids(4, 5)
    state = DecodeState(kv=built.to_dynamic_cache(rerotate=False), position=built.next_position)
    next(generate_tokens(llama, state, question.tolist(), GenerationSettings(max_new_tokens=1), set()))
    kv = built.to_dynamic_cache(rerotate=False)
    pos = torch.arange(built.last_position + 1, built.last_position + 5).view(1, -1)
    with torch.no_grad():
        ref = llama(question.view(1, -1), past_key_values=kv, position_ids=pos).logits[0, -1]
        wrong = llama(
            question.view(1, -1), past_key_values=built.to_dynamic_cache(rerotate=False), position_ids=pos - 1
        ).logits[0, -1]
    assert state.pending == [int(ref.argmax())]
    assert not torch.allclose(ref, wrong)


def test_question_aware_cache_answers_from_its_last_logits(chat_model, tokenizer):
    llama = chat_model
    text = "The key is 42. " * 60
    cache = build_document_cache(llama, tokenizer, text, CFG, question="What is the key?")
    conv = Conversation(cache, llama, tokenizer)
    pieces = list(conv.ask("What is the key?", max_new_tokens=3))
    assert conv.stats["new_tokens"] >= 1 and isinstance("".join(pieces), str)


def test_conversation_never_mutates_the_stored_cache(chat_model, tokenizer):
    llama = chat_model
    text = "Alice met Bob in Paris. " * 40
    cache = build_document_cache(llama, tokenizer, text, CFG)
    before = {k: v.clone() for k, v in cache.tensors().items()}
    conv = Conversation(cache, llama, tokenizer)
    first = "".join(conv.ask("Who met Bob?", max_new_tokens=5))
    second = "".join(conv.ask("Where?", max_new_tokens=5))
    assert len(conv.turns) == 2 and conv.rebuilds == 0 and conv.turns[0][1] == first and conv.turns[1][1] == second
    for name, tensor in cache.tensors().items():
        assert torch.equal(tensor, before[name]), name
    # the working cache grew by both turns; the stored one did not
    assert conv.state.kv.get_seq_length() > len(cache)
    # a fresh conversation gives the same first answer (greedy): nothing leaked between them
    assert "".join(Conversation(cache, llama, tokenizer).ask("Who met Bob?", max_new_tokens=5)) == first


def test_follow_up_turn_appends_only_new_text(chat_model, tokenizer):
    llama = chat_model
    cache = build_document_cache(llama, tokenizer, "Some text. " * 80, CFG)
    conv = Conversation(cache, llama, tokenizer)
    list(conv.ask("One?", max_new_tokens=4))
    length_after_first = conv.state.kv.get_seq_length()
    list(conv.ask("Two?", max_new_tokens=4))
    rendered = conv.prompt.render(tokenizer, conv.turns[:1], "Two?")
    assert rendered.endswith("Two?<|im_end|>\n<|im_start|>assistant\n")
    added = conv.state.kv.get_seq_length() - length_after_first
    assert added < 40  # the question turn, the pending token and the answer — not the history


def test_document_cache_keeps_character_offsets(chat_model, tokenizer):
    llama = chat_model
    text = "".join(f"Sentence number {i}. " for i in range(60))
    cache = build_document_cache(llama, tokenizer, text, CFG)
    kept = cache.sources >= 0
    offsets = cache.char_offsets[kept]
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert (offsets >= 0).all() and (cache.char_offsets[~kept] == -1).all()
    for off, tok in zip(offsets.tolist()[:20], cache.token_ids[kept].tolist()[:20]):
        assert text[off] == tokenizer.decode([tok])[0]
    assert len(ids) == int(cache.metadata["context_len"])
