"""The app's settings (:mod:`app.settings`): one typed object read from the environment once,
with every variable's old name and default; yes/no settings parsed one way everywhere
(1/true/yes/on, 0/false/no/off; anything else refused); a bad value refused at start in one
line naming the variable; the configuration page generated from them.

Issue 22, finding 12: ``HOMER_LOCK_MODEL=0`` locked the model, because app.py took any
non-empty value for yes. Issue 24: ~46 variables were read in ~45 places, with several
parsers of "true"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from app_helpers import ROOT, running_app

from app.settings import (
    TABLE_END,
    TABLE_START,
    Settings,
    SettingsError,
    configured,
    load_settings,
    markdown_table,
    read_settings,
    use_settings,
    with_table,
)

VARIABLES = [
    field.validation_alias
    for section in Settings.model_fields.values()
    for field in section.annotation.model_fields.values()
]
FLAGS = [
    "HOMER_LOCK_MODEL",
    "HOMER_MCP",
    "HOMER_HF_OAUTH",
    "HOMER_NOT_FOUND",
    "HOMER_CITATIONS",
    "HOMER_DEEP_READ",
    "SPACES_ZERO_GPU",
    "HOMER_OCR",
]


@pytest.fixture
def clean(monkeypatch):
    """No setting in the environment: the defaults."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --- yes and no ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expected",
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_the_words_of_yes_and_no(clean, value, expected):
    clean.setenv("HOMER_LOCK_MODEL", value)
    assert read_settings().server.lock_model is expected
    clean.setenv("HOMER_CITATIONS", value)
    assert read_settings().answering.citations is expected


@pytest.mark.parametrize("blank", [None, "", "  "])
def test_unset_or_blank_is_the_default(clean, blank):
    for name in ("HOMER_CITATIONS", "HOMER_DEEP_READ", "HOMER_MAX_TOKENS"):
        if blank is not None:
            clean.setenv(name, blank)
    settings = read_settings()
    assert settings.answering.citations is True and settings.builds.deep_read is False
    assert settings.ingest.max_tokens == 1_000_000


def test_the_flags_are_every_yes_no_setting():
    flags = {
        field.validation_alias
        for section in Settings.model_fields.values()
        for field in section.annotation.model_fields.values()
        if "bool" in str(field.annotation)
    }
    assert flags == set(FLAGS)


@pytest.mark.parametrize("name", FLAGS)
def test_anything_else_is_refused_naming_the_variable(clean, name):
    read_settings()
    clean.setenv(name, "maybe")
    with pytest.raises(SettingsError) as refused:
        read_settings()
    message = str(refused.value)
    assert message == f"{name} must be one of 1/true/yes/on or 0/false/no/off, not 'maybe'"


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("HOMER_MAX_TOKENS", "abc", "HOMER_MAX_TOKENS must be a whole number, not 'abc'"),
        ("HOMER_MAX_UPLOAD_MB", "lots", "HOMER_MAX_UPLOAD_MB must be a number, not 'lots'"),
        ("HOMER_ZIP_MAX_MB", "0", "HOMER_ZIP_MAX_MB must be positive, not '0'"),
        ("HOMER_RENDER_SECONDS", "nan", "HOMER_RENDER_SECONDS must be a number, not 'nan'"),
        (
            "HOMER_FOCUS",
            "everything",
            "HOMER_FOCUS must be one of auto, cache, passages, cache+passages, not 'everything'",
        ),
        ("HOMER_RETRIEVER", "vector", "HOMER_RETRIEVER must be one of bm25, dense, rrf, not 'vector'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(clean, name, value, message):
    clean.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        read_settings()
    assert str(refused.value) == message


def test_the_orders_keep_their_default_for_an_unknown_word(clean, caplog):
    clean.setenv("HOMER_PASSAGE_ORDER", " Best-First ")
    clean.setenv("HOMER_SOURCE_ORDER", "shuffled")
    settings = read_settings()
    assert settings.answering.passage_order == "best-first" and settings.answering.source_order == "retrieval"
    assert "HOMER_SOURCE_ORDER must be one of retrieval, attention, not 'shuffled': retrieval used" in caplog.text


# --- one object, its defaults the old ones -------------------------------------------------------
def test_each_variable_is_read_by_its_own_name(clean):
    clean.setenv("HOMER_MAX_TOKENS", "5000")
    clean.setenv("HOMER_FOCUS", " Cache ")
    clean.setenv("SPACE_ID", "team/homer-chat")
    clean.setenv("HOMER_AUTH", "ann:pw,bob:pw2")
    clean.setenv("homer_max_pages", "3")  # names are case-sensitive, as the environment is
    clean.setenv("max_tokens", "7")  # a field's own name is not a variable
    settings = read_settings()
    assert settings.ingest.max_tokens == 5000 and settings.answering.focus == "cache"
    assert settings.space.space_id == "team/homer-chat" and settings.ingest.max_pages == 2000
    assert settings.server.auth.get_secret_value() == "ann:pw,bob:pw2" and "pw2" not in repr(settings)


def test_the_defaults_are_those_the_code_had(clean):
    """The settings' defaults against the defaults of the code that takes them."""
    from app.ingest import IngestLimits, zip_limits
    from homer.answering import focus as answering_focus
    from homer.reading.formats import ocr, render
    from homer.reading.formats.zipsafe import ZipLimits
    from storage import bundle_schema
    from storage import passages as index

    settings = read_settings()
    assert IngestLimits.from_settings(settings) == IngestLimits()
    assert zip_limits(settings) == ZipLimits()
    assert (settings.render.seconds, settings.render.workers, settings.render.memory_mb) == (
        render.DEFAULT_SECONDS,
        render.DEFAULT_WORKERS,
        render.DEFAULT_MEMORY_MB,
    )
    assert (settings.ocr.tesseract, settings.ocr.language) == (ocr.DEFAULT_COMMAND, ocr.DEFAULT_LANGUAGE)
    assert (settings.bundles.max_mb, settings.bundles.max_text_mb) == (
        bundle_schema.DEFAULT_BUNDLE_MB,
        bundle_schema.DEFAULT_TEXT_MB,
    )
    assert settings.storage.retriever is None and index.DEFAULT_METHOD == "bm25"  # as its description says
    answering = settings.answering
    assert (answering.focus_passages, answering.passage_order) == (
        answering_focus.DEFAULT_PASSAGES,
        answering_focus.DEFAULT_PASSAGE_ORDER,
    )
    from app import focus

    assert answering.focus == focus.DEFAULT_FOCUS and answering.focus_words == focus.DEFAULT_EXCERPT_WORDS
    assert answering.source_order == focus.DEFAULT_SOURCE_ORDER


def test_the_words_the_settings_take_are_the_code_s():
    from app import focus, settings
    from homer.answering import focus as answering_focus
    from storage import passages as index

    assert settings.FOCUS_CHOICES == focus.CHOICES
    assert set(settings.PASSAGE_ORDERS) == set(answering_focus.PASSAGE_ORDERS)
    assert settings.SOURCE_ORDERS == focus.SOURCE_ORDERS
    assert set(settings.RETRIEVERS) == set(index.METHODS)


def test_settings_are_made_directly_and_changed_as_validated_copies(clean):
    clean.setenv("HOMER_MAX_TOKENS", "5000")
    made = Settings(answering={"focus": "cache"})  # given fields win; the others are the environment's
    assert made.answering.focus == "cache" and made.ingest.max_tokens == 5000
    changed = made.changed(builds={"deep_read": True}, chat={"max_conversations": 1})
    assert changed.builds.deep_read and changed.chat.max_conversations == 1 and not made.builds.deep_read
    assert changed.answering is made.answering
    with pytest.raises(
        SettingsError, match="^HOMER_DEEP_READ must be one of 1/true/yes/on or 0/false/no/off, not 'maybe'$"
    ):
        made.changed(builds={"deep_read": "maybe"})
    with pytest.raises(Exception):  # frozen: a change is a copy
        made.builds.deep_read = True


def test_the_process_reads_its_settings_once(clean):
    saved = use_settings(None)
    try:
        clean.setenv("HOMER_MAX_CONVERSATIONS", "3")
        first = load_settings()
        clean.setenv("HOMER_MAX_CONVERSATIONS", "5")  # too late: read at start
        assert load_settings() is first and first.chat.max_conversations == 3
        with configured(chat={"max_conversations": 2}) as inside:
            assert load_settings() is inside and inside.chat.max_conversations == 2
        assert load_settings() is first
    finally:
        use_settings(saved)


def test_the_store_s_settings_reach_the_store(tmp_path, configure, monkeypatch):
    """The store takes its settings as arguments; the app passes the settings' values."""
    from app import answering, focus, library
    from app.tasks import open_store
    from storage import passages as index
    from storage.bundle_schema import max_bundle_bytes

    configure(storage={"checkpoint_max_age_hours": 2, "retriever": "RRF"}, bundles={"max_mb": 64, "max_text_mb": 1})
    store = open_store(tmp_path / "store")
    assert store.checkpoint_max_age_hours == 2
    asked = []
    monkeypatch.setattr(index, "search", lambda *args, **kwargs: asked.append(kwargs) or [])
    answering.StoredPassages(store, "d").search("Who?")
    assert asked == [{"method": "rrf"}] and focus.retriever() == "rrf"
    assert library.bundle_limits() == {"bundle_max_mb": 64, "bundle_max_text_mb": 1}
    assert library.max_request_bytes() == max(50 * 2**20, max_bundle_bytes(64))


# --- the configuration page ---------------------------------------------------------------------
def test_the_configuration_page_agrees_with_the_settings():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert TABLE_START in page and TABLE_END in page, "markers missing from docs/configuration.md"
    shown = page.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert shown == markdown_table().strip(), "docs/configuration.md is stale: run python -m app.settings --markdown"
    for name in VARIABLES:
        assert f"`{name}`" in shown
    assert "python -m app.settings --update docs/configuration.md" in page
    assert with_table(page) == page  # regenerating changes nothing


def test_every_setting_has_a_description():
    for section in Settings.model_fields.values():
        assert section.annotation.__doc__
        for field in section.annotation.model_fields.values():
            assert field.description and "\n" not in field.description, field.validation_alias


# --- at start --------------------------------------------------------------------------------------
def refused_at_start(command: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    environment = {**os.environ, "HOMER_HOME": str(home), "HF_HUB_OFFLINE": "1", **env}
    environment.pop("SPACE_ID", None)
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert not home.exists(), "refused before anything was loaded or stored"
    return done


@pytest.mark.parametrize("name, value", [("HOMER_LOCK_MODEL", "maybe"), ("HOMER_MAX_TOKENS", "abc")])
def test_the_app_refuses_a_bad_setting_at_start(tmp_path, name, value):
    """Before the store, the model or gradio: one line, exit status 1, nothing made."""
    done = refused_at_start([sys.executable, str(ROOT / "app.py"), "--model", "embedded"], tmp_path, **{name: value})
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"HOMER Chat: {name} ") and f"'{value}'" in lines[0], done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_the_commands_and_the_worker_refuse_a_bad_setting(tmp_path):
    for command in ([sys.executable, "-m", "app", "jobs"], [sys.executable, "-m", "app.worker"]):
        done = refused_at_start(command, tmp_path, HOMER_OCR="maybe")
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert done.stderr.strip() == "error: HOMER_OCR must be one of 1/true/yes/on or 0/false/no/off, not 'maybe'"


@pytest.mark.e2e
def test_lock_model_0_leaves_the_model_switchable(tmp_path, model_dir):
    with running_app(tmp_path / "home", model_dir, env={"HOMER_LOCK_MODEL": "0"}) as url:
        with urllib.request.urlopen(f"{url}config", timeout=30) as response:
            config = json.load(response)
    fields = [
        c["props"]
        for c in config["components"]
        if str(c.get("props", {}).get("label", "")).startswith("Model: embedded")
    ]
    assert len(fields) == 1 and fields[0]["interactive"] is True, fields
