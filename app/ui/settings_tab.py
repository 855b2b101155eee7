"""The Settings tab: the model in use (switchable unless the app serves one), the HOMER
settings new builds use (defaults derived from the model) and the generation settings."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from homer.config import SIGNIFICANCE_CHOICES

from .. import library
from ..chat import settings_overrides
from .common import PageState, Services

SIGNIFICANCE = list(SIGNIFICANCE_CHOICES)
CACHE_DTYPES = ["float16", "bfloat16", "float32"]
SPANS = ["word", "sentence", "token"]


@dataclass
class SettingsTab:
    """The Settings tab's components."""

    model_box: gr.Textbox
    model_btn: gr.Button
    model_info: gr.Markdown
    boxes: list  # the HOMER settings: M, T, W, significance, pool width, span, query rows, cache dtype
    apply_btn: gr.Button
    status: gr.Markdown
    temperature: gr.Slider
    max_new_tokens: gr.Slider


# --- handlers ---------------------------------------------------------------------------------
def model_markdown(services: Services, model: str) -> str:
    info = services.chat.model_info(model)
    return (
        f"**Model in use:** `{library.short_model(info['name'])}` · fingerprint `{info['fingerprint'][:12]}` · "
        f"{info['layers']} layers · window {info['window']} tokens · {info['device']} / {info['dtype']}"
    )


def settings_fields(services: Services, model: str, settings: dict):
    """The HOMER settings boxes' values: ``settings`` over the model's defaults."""
    defaults = services.chat.model_info(model)["defaults"]
    merged = {**defaults, **(settings or {})}
    return (
        merged["max_chunk_len"],
        merged["target_len"],
        merged["warmup_layers"],
        merged["significance"],
        merged["pool_width"],
        merged["span"],
        merged["query_rows"],
        merged["cache_dtype"],
    )


def on_load(services: Services, model: str, settings: dict):
    return (model_markdown(services, model), *settings_fields(services, model, settings))


def use_model(services: Services, name: str, current: str):
    name = (name or "").strip() or "embedded"
    if not services.allow_model_change and name != current:
        return (
            current,
            current,
            {},
            "✗ this app serves one model; start it with `--model` to use another",
            *settings_fields(services, current, {}),
        )
    try:
        services.chat.model(name)
    except Exception as exc:  # unknown id, no network, not a causal LM …
        return (
            current,
            current,
            {},
            f"✗ cannot load {name}: {type(exc).__name__}: {exc}"[:500],
            *settings_fields(services, current, {}),
        )
    return name, name, {}, model_markdown(services, name), *settings_fields(services, name, {})


def apply_settings(services: Services, model: str, m, t, w, significance, pool, span, rows, dtype):
    requested = {
        "max_chunk_len": m,
        "target_len": t,
        "warmup_layers": w,
        "significance": significance,
        "pool_width": pool,
        "span": span,
        "query_rows": rows,
        "cache_dtype": dtype,
    }
    try:
        overrides = settings_overrides(services.chat.model(model)[0].config, requested)
    except (ValueError, TypeError) as exc:
        return gr.update(), f"✗ {exc}"
    if not overrides:
        return {}, "Using the defaults derived from the model."
    return overrides, (
        "New documents will be read with "
        + ", ".join(f"{k} = {v}" for k, v in overrides.items())
        + "; a document already read with other settings can be read again from the Library."
    )


# --- layout and events ------------------------------------------------------------------------
def layout(model_name: str, allow_model_change: bool) -> SettingsTab:
    """The Settings tab, inside the page's ``gr.Tabs``."""
    with gr.Tab("Settings", id="settings"):
        with gr.Row():
            model_box = gr.Textbox(
                value=model_name,
                label="Model: embedded, a Hugging Face id or a local folder",
                interactive=allow_model_change,
                scale=4,
            )
            model_btn = gr.Button("Use this model", scale=1, interactive=allow_model_change)
        model_info = gr.Markdown()
        gr.Markdown(
            "**HOMER settings** for new builds (defaults derived from the model: M = window / 2, "
            "T = M, W ≈ 3/8 of the layers). A cache is only ever used with the model and settings "
            "it was built with."
        )
        with gr.Row():
            m_box = gr.Number(
                label="M: cached document tokens (the window minus M is left for the conversation)",
                precision=0,
                minimum=4,
            )
            t_box = gr.Number(label="T: cache tokens", precision=0, minimum=4)
            w_box = gr.Number(label="W: warm-up layers", precision=0, minimum=0)
        with gr.Row():
            significance = gr.Dropdown(SIGNIFICANCE, label="significance", value="calibrated")
            pool = gr.Number(label="pool width (0 = off)", precision=0, minimum=0, value=0)
            span = gr.Dropdown(SPANS, label="pruning unit (token = the paper's)", value="word")
            rows = gr.Number(label="scoring queries (1 = the paper's last token)", precision=0, minimum=1, value=24)
            dtype = gr.Dropdown(CACHE_DTYPES, label="cache dtype", value="float16")
        apply_btn = gr.Button("Apply HOMER settings")
        status = gr.Markdown()
        gr.Markdown("**Generation**")
        with gr.Row():
            temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0 = greedy)")
            max_new_tokens = gr.Slider(8, 1024, value=256, step=8, label="max new tokens")
    return SettingsTab(
        model_box,
        model_btn,
        model_info,
        [m_box, t_box, w_box, significance, pool, span, rows, dtype],
        apply_btn,
        status,
        temperature,
        max_new_tokens,
    )


def wire_page_load(
    demo: gr.Blocks, services: Services, tab: SettingsTab, state: PageState, model_line: gr.Markdown, refreshed: dict
) -> None:
    """When the page loads: the model line under the title, the settings boxes, then the library."""
    demo.load(
        services.bind(on_load), [state.model, state.settings], [model_line, *tab.boxes], api_visibility="private"
    ).then(lambda text: text, model_line, tab.model_info, api_visibility="private").then(**refreshed)


def wire(services: Services, tab: SettingsTab, state: PageState, model_line: gr.Markdown, refreshed: dict) -> None:
    """Switch the model (then the model line and the library follow); apply HOMER settings."""
    tab.model_btn.click(
        services.bind(use_model),
        [tab.model_box, state.model],
        [state.model, tab.model_box, state.settings, tab.model_info, *tab.boxes],
        api_visibility="private",
    ).then(lambda model: model_markdown(services, model), state.model, model_line, api_visibility="private").then(
        **refreshed
    )
    tab.apply_btn.click(
        services.bind(apply_settings), [state.model, *tab.boxes], [state.settings, tab.status], api_visibility="private"
    )
