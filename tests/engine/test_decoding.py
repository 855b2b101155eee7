"""The preallocated decode path gives the same greedy tokens as the DynamicCache baseline:
every supported family, several turns, buffers that grow, sliding-window fallback."""

import pytest
import torch
from conftest import random_ids, tiny_model
from transformers import AutoModelForCausalLM, Qwen3Config

from homer import Conversation, HomerConfig, build_cache, build_document_cache
from homer.generation import DecodeState, GenerationSettings, PreallocatedCache, generate_tokens

CFG = HomerConfig(significance="uncalibrated", cache_dtype="float32")


def tiny_qwen3():
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()


MODELS = {
    "llama": lambda: tiny_model("llama", window=1024),
    "mistral": lambda: tiny_model("mistral", window=1024),
    "qwen2": lambda: tiny_model("qwen2", window=1024),
    "qwen3": tiny_qwen3,
    "mistral-window": lambda: tiny_model("mistral", window=1024, sliding_window=48),  # cache > window: fallback
}


def turns(model, kv, position, feeds, new_tokens):
    """Greedy continuation over several turns; returns the tokens of each turn."""
    state = DecodeState(kv=kv, position=position)
    out = []
    for ids in feeds:
        out.append(list(generate_tokens(model, state, ids, GenerationSettings(max_new_tokens=new_tokens), set())))
    return out, state


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_preallocated_path_matches_dynamic_cache_across_turns_and_growth(name, monkeypatch):
    from homer.generation import DecodeStep

    steps = []
    call = DecodeStep.__call__
    monkeypatch.setattr(DecodeStep, "__call__", lambda self, *a: steps.append(1) or call(self, *a))
    model = MODELS[name]()
    cache = build_cache(model, random_ids(3, 1), random_ids(200, 2), random_ids(2, 3), CFG)
    feeds = [random_ids(5, 4).tolist(), random_ids(3, 5).tolist(), random_ids(7, 6).tolist()]
    before = {k: v.clone() for k, v in cache.tensors().items()}

    expected, dyn = turns(model, cache.to_dynamic_cache(rerotate=False), cache.next_position, feeds, 14)
    kv = PreallocatedCache.from_homer(cache, headroom=4, chunk=8)  # tiny chunks: grows several times
    got, pre = turns(model, kv, cache.next_position, feeds, 14)

    assert got == expected
    assert (len(steps) == 0) if name == "mistral-window" else (len(steps) == 3 * 13)  # one-token steps by hand
    assert kv.grows >= 3 and kv.capacity >= kv.get_seq_length() == dyn.kv.get_seq_length()
    assert pre.position == dyn.position and pre.pending == dyn.pending
    for a, b in zip(kv.layers, dyn.kv.layers):
        torch.testing.assert_close(a.keys, b.keys)
        torch.testing.assert_close(a.values, b.values)
    for key, tensor in cache.tensors().items():  # the stored cache is only read
        assert torch.equal(tensor, before[key]), key


def test_decode_step_logits_match_the_model_forward():
    from homer.generation import DecodeStep

    model = tiny_model("llama", window=1024)
    cache = build_cache(model, random_ids(3, 1), random_ids(100, 2), random_ids(2, 3), CFG)
    kv = PreallocatedCache.from_homer(cache)
    dyn = cache.to_dynamic_cache(rerotate=False)
    with torch.no_grad():
        ours = DecodeStep(model)(kv, 7, cache.next_position)
        ref = model(
            input_ids=torch.tensor([[7]]),
            past_key_values=dyn,
            position_ids=torch.tensor([[cache.next_position]]),
            use_cache=True,
        ).logits[:, -1]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_conversation_answers_are_the_same_with_either_cache(tokenizer):
    model = tiny_model("llama", window=1024)
    cache = build_document_cache(model, tokenizer, "Alice met Bob in Paris. " * 40, CFG)
    questions = ["Who met Bob?", "Where?", "When?"]
    answers = {}
    for kind in ("dynamic", "preallocated"):
        conv = Conversation(cache, model, tokenizer, kv_cache=kind)
        answers[kind] = [("".join(conv.ask(q, max_new_tokens=6)), conv.state.kv.get_seq_length()) for q in questions]
        assert conv.rebuilds == 0
    assert answers["dynamic"] == answers["preallocated"]


def test_reset_gives_a_fresh_working_copy(tokenizer):
    model = tiny_model("llama", window=1024)
    cache = build_document_cache(model, tokenizer, "Some text. " * 60, CFG)
    conv = Conversation(cache, model, tokenizer)
    first = "".join(conv.ask("One?", max_new_tokens=5))
    assert isinstance(conv.state.kv, PreallocatedCache) and conv.state.kv.get_seq_length() > len(cache)
    old = conv.state.kv
    conv.reset()
    assert conv.state.kv is not old and conv.state.kv.get_seq_length() == len(cache) and not conv.turns
    assert "".join(conv.ask("One?", max_new_tokens=5)) == first


def test_unknown_kv_cache_kind_is_refused(tokenizer):
    model = tiny_model("llama", window=1024)
    cache = build_document_cache(model, tokenizer, "Some text. " * 30, CFG)
    with pytest.raises(ValueError, match="kv_cache"):
        Conversation(cache, model, tokenizer, kv_cache="static")


def test_preallocated_cache_crops_and_refills():
    kv = PreallocatedCache(chunk=4)
    k = torch.randn(1, 2, 6, 8)
    keys, _ = kv.update(k, k.clone(), 0)
    assert keys.shape[2] == 6 and kv.layers[0].capacity == 8
    kv.crop(-2)
    assert kv.get_seq_length() == 4
    new = torch.randn(1, 2, 5, 8)
    keys, values = kv.update(new, new.clone(), 0)
    assert torch.equal(keys, torch.cat([k[:, :, :4], new], 2)) and torch.equal(values, keys)
    assert kv.layers[0].grows == 1


def test_half_precision_cache_is_held_as_stored_and_decodes_like_the_forward(tokenizer):
    """A float16 cache next to a float32 model: the working copy keeps float16 buffers holding
    exactly the stored rows; the model's forward gets an upcast copy; the hand step's logits
    match that forward up to the rounding of its query to float16, and answers stay the same."""
    from homer.generation import DecodeStep, working_cache

    model = tiny_model("llama", window=1024)
    half = HomerConfig(significance="uncalibrated", cache_dtype="float16")
    cache = build_document_cache(model, tokenizer, "Alice met Bob in Paris. " * 40, half)
    kv = working_cache(cache, model)
    assert all(layer.keys.dtype == torch.float16 for layer in kv.layers)
    for layer, k, v in zip(kv.layers, cache.keys, cache.values):
        assert torch.equal(layer.keys[0], k) and torch.equal(layer.values[0], v)

    ref_kv = working_cache(cache, model)
    with torch.no_grad():
        ours = DecodeStep(model)(kv, 7, cache.next_position)
        ref = model(
            input_ids=torch.tensor([[7]]),
            past_key_values=ref_kv,
            position_ids=torch.tensor([[cache.next_position]]),
            use_cache=True,
        ).logits[:, -1]
    assert ref.dtype == torch.float32 and ref_kv.layers[0].keys.dtype == torch.float16
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3)

    answers = {}
    for kind in ("dynamic", "preallocated"):
        conv = Conversation(cache, model, tokenizer, kv_cache=kind)
        answers[kind] = ["".join(conv.ask(q, max_new_tokens=6)) for q in ("Who met Bob?", "Where?")]
    assert answers["dynamic"] == answers["preallocated"]


@pytest.mark.slow
def test_conversation_forgets_its_oldest_turns_to_stay_inside_the_window(tokenizer):
    """Window 512, cache ~256 tokens: the room is 256 tokens, a few short turns. Later
    turns restart from the stored cache with only the turns that still fit, and the working
    copy holds exactly the prompt rendered with those turns."""
    from homer import ConversationFullError
    from homer.prompting import DOC

    model = tiny_model("llama", window=512)
    cache = build_document_cache(model, tokenizer, "Alice met Bob in Paris. " * 12, CFG)
    conv = Conversation(cache, model, tokenizer)
    assert conv.window == 512 and len(cache) <= 256
    questions = [f"Question {i}: where did Alice meet Bob?" for i in range(8)]
    for question in questions:
        answer = "".join(conv.ask(question, max_new_tokens=24))
        assert conv.turns[-1] == (question, answer)
        assert conv.state.position + len(conv.state.pending) <= conv.window
    assert conv.dropped_turns >= 3 and len(conv.turns) == 8 - conv.dropped_turns
    assert [q for q, _ in conv.turns] == questions[conv.dropped_turns :]
    rendered = conv.prompt.render(tokenizer, conv.turns[:-1], conv.turns[-1][0]) + conv.turns[-1][1]
    assert DOC in rendered and conv.text.startswith(rendered)

    with pytest.raises(ConversationFullError, match="window"):
        "".join(conv.ask("x" * 600, max_new_tokens=4))


@pytest.mark.slow
def test_an_answer_stops_at_the_window(tokenizer):
    model = tiny_model("llama", window=512)
    cache = build_document_cache(model, tokenizer, "Alice met Bob in Paris. " * 12, CFG)
    conv = Conversation(cache, model, tokenizer)
    "".join(conv.ask("Who?", max_new_tokens=1000))
    assert conv.state.position + len(conv.state.pending) <= conv.window
