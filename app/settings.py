"""HOMER Chat's settings: one typed object, read from the environment once at start.

Every setting keeps the environment variable it always had (``HOMER_MAX_TOKENS``,
``HOMER_FOCUS``, ``SPACE_ID`` …) and its default; :class:`Settings` groups them by concern
(``server``, ``answering``, ``chat``, ``builds``, ``queue``, ``storage``, ``space``,
``ingest``, ``archives``, ``bundles``, ``ocr``, ``render``) as typed, documented fields.
The table of them all is ``docs/configuration.md`` (``python -m app.settings --markdown``).

It is built on pydantic-settings (``BaseSettings``), the Python ecosystem's typed settings
library (pydantic's own): the environment is read and every value validated in one place,
so a bad value stops the start in one line naming the variable (:class:`SettingsError`)
instead of surprising the first request that reads it. Yes/no settings have one parser
(:func:`parse_flag`: 1/true/yes/on, 0/false/no/off, any case; anything else is refused).
An unset or blank variable is the default.

* :func:`load_settings` — the process's settings: read from the environment on first use,
  then kept;
* :func:`use_settings` — make a :class:`Settings` the process's (the app after its command
  line's overrides, tests);
* ``Settings(answering={"focus": "cache"})`` — the environment's settings with some fields
  given; :meth:`Settings.changed` — a validated copy with some fields changed.

The library (``homer/``) reads no settings of its own (only ``HOMER_HOME`` and ``SPACE_ID``
for its data folder, :mod:`homer.paths`): the app passes it the values of these."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from . import settings_table
from .settings_table import TABLE_END, TABLE_START  # noqa: F401  (the page's markers, for its callers)

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
FLAG_WORDS = f"one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}"


class SettingsError(ValueError):
    """A setting with a value it cannot take; the message is one line that names the variable
    and what it accepts."""


def parse_flag(value: Any) -> Any:
    """A yes/no setting, parsed one way everywhere: 1/true/yes/on (any case) are true,
    0/false/no/off false; any other word is refused (``=0`` must never mean yes because the
    string is not empty — issue 22, finding 12)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"must be {FLAG_WORDS}")


def choice(*allowed: str):
    """A validator of a word among ``allowed`` (spaces around it and case ignored)."""

    def check(value: Any) -> Any:
        word = str(value).strip().lower()
        if word not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return word

    return BeforeValidator(check)


def lenient_choice(variable: str, allowed: tuple[str, ...], default: str):
    """A word among ``allowed`` (spaces and case ignored); any other is ``default`` with a
    warning in the log, as these settings always were."""

    def check(value: Any) -> Any:
        word = str(value).strip().lower()
        if word not in allowed:
            import logging

            logging.getLogger(__name__).warning(
                "%s must be one of %s, not %r: %s used", variable, ", ".join(allowed), word, default
            )
            return default
        return word

    return BeforeValidator(check)


Flag = Annotated[bool, BeforeValidator(parse_flag)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]


def setting(default: Any, variable: str, description: str, **constraints) -> Any:
    """A field read from the environment variable ``variable``."""
    return Field(default, validation_alias=variable, description=description, **constraints)


class Section(BaseModel):
    """One concern's settings: fields named for the code, read by their variables' names."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)


# Words the answering settings take (homer.answering.focus holds the same; tests/webapp/test_settings.py
# checks they agree: importing it here would load torch before the app has checked its settings).
FOCUS_CHOICES = ("auto", "cache", "passages", "cache+passages")
PASSAGE_ORDERS = ("best-first", "best-last")
SOURCE_ORDERS = ("retrieval", "attention")
RETRIEVERS = ("bm25", "dense", "rrf")


class ServerSettings(Section):
    """The app's process and who may use it."""

    model: str = setting(
        "embedded",
        "HOMER_MODEL",
        "The model: embedded (SmolLM2-135M-Instruct), a Hugging Face id or a local folder (app.py --model wins)",
    )
    auth: SecretStr | None = setting(
        None,
        "HOMER_AUTH",
        "Logins, user:password pairs separated by commas (app.py --auth wins); "
        "each user then sees only their own documents",
    )
    lock_model: Flag = setting(
        False, "HOMER_LOCK_MODEL", "Users may not switch the model in Settings (always locked on a Space)"
    )
    mcp: Flag = setting(True, "HOMER_MCP", "Serve the MCP tools (when gradio's mcp extra is installed)")
    hf_oauth: Flag | None = setting(None, "HOMER_HF_OAUTH", "Sign in with Hugging Face (unset: on a Space only)")
    gradio_temp_dir: str | None = setting(
        None,
        "GRADIO_TEMP_DIR",
        "gradio's upload folder, the only one the MCP tools read files from "
        "(unset: the system temporary folder's gradio)",
    )


class AnsweringSettings(Section):
    """How a question is answered (app.focus, homer.answering)."""

    focus: Annotated[str, choice(*FOCUS_CHOICES)] = setting(
        "auto",
        "HOMER_FOCUS",
        "What a question is answered from: auto (the cache for a question about the whole "
        "document, passages and cache for the others), cache+passages, passages or cache",
    )
    focus_passages: int = setting(3, "HOMER_FOCUS_PASSAGES", "Passages retrieved per question (at least 1)")
    focus_words: int = setting(
        80,
        "HOMER_FOCUS_WORDS",
        "Words of each passage the model reads, its best window for the question (0: the whole passage)",
    )
    passage_order: Annotated[str, lenient_choice("HOMER_PASSAGE_ORDER", PASSAGE_ORDERS, "best-last")] = setting(
        "best-last",
        "HOMER_PASSAGE_ORDER",
        "The order the model reads the passages in: best-last or best-first (another word: best-last, with a warning)",
    )
    source_order: Annotated[str, lenient_choice("HOMER_SOURCE_ORDER", SOURCE_ORDERS, "retrieval")] = setting(
        "retrieval",
        "HOMER_SOURCE_ORDER",
        "How a focused answer lists its sources: retrieval or attention (another word: retrieval, with a warning)",
    )
    not_found: Flag = setting(
        True,
        "HOMER_NOT_FOUND",
        "Say 'I could not find this in the document.' when the passages hold too little "
        "of the question, without running the model",
    )
    citations: Flag = setting(True, "HOMER_CITATIONS", "Sources under answers")


class ChatSettings(Section):
    """What the chat keeps in memory."""

    max_conversations: int = setting(
        8,
        "HOMER_MAX_CONVERSATIONS",
        "Conversations whose working KV cache stays in memory (an evicted one re-reads its turns at its next question)",
    )
    max_loaded_caches: int = setting(4, "HOMER_MAX_LOADED_CACHES", "Document caches kept loaded in memory")


class BuildSettings(Section):
    """Reading documents into caches: the build jobs (app.tasks, app.slices)."""

    deep_read: Flag = setting(
        False,
        "HOMER_DEEP_READ",
        "Also keep each document's leaf states for deep reads (about 15 KB per token "
        "with the embedded model; --deep-read sets it)",
    )
    large_build_chars: PositiveInt = setting(
        250_000, "HOMER_LARGE_BUILD_CHARS", "Documents of more characters build in the large lane"
    )
    large_workers: int = setting(1, "HOMER_LARGE_WORKERS", "Build threads of the large lane (at least 1)")
    job_lease_seconds: Positive = setting(
        30.0, "HOMER_JOB_LEASE_SECONDS", "How long a worker's claim on a job lasts without renewal"
    )
    job_retry_delay: float = setting(5.0, "HOMER_JOB_RETRY_DELAY", "Seconds before a failed build is tried again", ge=0)
    gpu_slice_seconds: float = setting(
        60.0, "HOMER_GPU_SLICE_SECONDS", "The longest slice a build in requests asks the GPU for (0 or less: 60)"
    )
    gpu_slice_margin: float = setting(
        10.0, "HOMER_GPU_SLICE_MARGIN", "Seconds of a slice kept for starting and the last step (at most half)"
    )
    test_step_delay: float = setting(
        0.0, "HOMER_TEST_STEP_DELAY", "For tests only: seconds each build step sleeps (slows builds down)", ge=0
    )


class QueueSettings(Section):
    """The build queue (app.worker)."""

    redis_url: str | None = setting(
        None,
        "HOMER_REDIS_URL",
        "Redis URL of a queue shared by several worker machines (unset: a SQLite queue in the store)",
    )
    queue_name: str = setting("homer", "HOMER_QUEUE_NAME", "The queue's name on Redis")


class StorageSettings(Section):
    """The store (storage/)."""

    checkpoint_max_age_hours: Positive = setting(
        24.0, "HOMER_CHECKPOINT_MAX_AGE_HOURS", "Hours before an unfinished build's checkpoints count as stale"
    )
    retriever: Annotated[str, choice(*RETRIEVERS)] | None = setting(
        None, "HOMER_RETRIEVER", "How passages are searched: bm25, dense or rrf (unset: bm25)"
    )


class SpaceSettings(Section):
    """A Hugging Face Space (set by the platform)."""

    space_id: str | None = setting(None, "SPACE_ID", "Set on a Space: the model is locked, sign-in is on")
    zero_gpu: Flag = setting(False, "SPACES_ZERO_GPU", "A ZeroGPU Space: builds run in requests, in GPU slices")
    gpu_seconds: PositiveInt = setting(120, "HOMER_GPU_SECONDS", "Seconds of GPU a ZeroGPU request asks for")


class IngestSettings(Section):
    """What one upload may cost (app.ingest.IngestLimits)."""

    max_upload_mb: Positive = setting(50.0, "HOMER_MAX_UPLOAD_MB", "The largest upload, in MB")
    max_pages: PositiveInt = setting(2000, "HOMER_MAX_PAGES", "A PDF's pages, checked before any is read")
    max_chars: PositiveInt = setting(4_000_000, "HOMER_MAX_CHARS", "Characters of text of a document")
    max_page_chars: PositiveInt = setting(100_000, "HOMER_MAX_PAGE_CHARS", "Characters of text of one PDF page")
    max_page_content_mb: Positive = setting(
        16.0, "HOMER_MAX_PAGE_CONTENT_MB", "One PDF page's decoded content stream, in MB"
    )
    max_tokens: PositiveInt = setting(1_000_000, "HOMER_MAX_TOKENS", "A document's length in the model's tokens")
    ingest_seconds: Positive = setting(
        120.0, "HOMER_INGEST_SECONDS", "Seconds for reading, counting and splitting an upload (OCR adds its own)"
    )
    ocr_max_pages: PositiveInt = setting(200, "HOMER_OCR_MAX_PAGES", "Scanned pages of a PDF read by OCR")
    ocr_page_seconds: Positive = setting(20.0, "HOMER_OCR_PAGE_SECONDS", "Seconds of OCR allowed per scanned page")
    ocr_empty_pages: PositiveInt = setting(
        8, "HOMER_OCR_EMPTY_PAGES", "OCR stops when this many first scanned pages gave no text"
    )


class ArchiveSettings(Section):
    """EPUB and DOCX files are zip archives: what one may hold (homer.reading.formats.zipsafe)."""

    max_members: PositiveInt = setting(10_000, "HOMER_ZIP_MAX_MEMBERS", "Files in the archive")
    max_mb: Positive = setting(256.0, "HOMER_ZIP_MAX_MB", "The archive's uncompressed total, in MB")
    max_member_mb: Positive = setting(64.0, "HOMER_ZIP_MAX_MEMBER_MB", "One member uncompressed, in MB")
    max_ratio: Positive = setting(100.0, "HOMER_ZIP_MAX_RATIO", "Uncompressed ÷ compressed size of a member over 1 MB")
    docx_max_parse_mb: Positive = setting(
        384.0, "HOMER_DOCX_MAX_PARSE_MB", "Memory parsing a DOCX's XML may take, estimated from its bytes, in MB"
    )


class BundleSettings(Section):
    """Shared bundles (a document's cache as a file, storage.bundles)."""

    max_mb: Positive = setting(512.0, "HOMER_BUNDLE_MAX_MB", "The largest bundle imported, in MB")
    max_text_mb: Positive = setting(16.0, "HOMER_BUNDLE_MAX_TEXT_MB", "A bundle's text, in MB")


class OcrSettings(Section):
    """OCR of scanned PDF pages (homer.reading.formats.ocr)."""

    enabled: Flag = setting(True, "HOMER_OCR", "Read scanned pages with Tesseract")
    tesseract: str = setting("tesseract", "HOMER_TESSERACT", "The Tesseract program: a path or a name on the PATH")
    language: str = setting("eng", "HOMER_OCR_LANG", "Tesseract's language(s): eng, or eng+deu for two")


class RenderSettings(Section):
    """PDF pages drawn in worker processes, for the reader and OCR (homer.reading.formats.render)."""

    seconds: Positive = setting(5.0, "HOMER_RENDER_SECONDS", "Seconds to render one page")
    workers: PositiveInt = setting(2, "HOMER_RENDER_WORKERS", "Render worker processes")
    memory_mb: Positive = setting(2048.0, "HOMER_RENDER_MEMORY_MB", "A render worker's address space, in MB")


class _Environment(EnvSettingsSource):
    """The environment as the sections read it: each field by its own variable
    (``HOMER_MAX_TOKENS``, not ``INGEST__MAX_TOKENS``); blank is unset. pydantic-settings reads
    a nested model's fields only under the section's prefix, so this maps them."""

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, section in self.settings_cls.model_fields.items():
            values = {}
            for field in section.annotation.model_fields.values():
                value = self.env_vars.get(field.validation_alias)
                if value is not None and value.strip():
                    values[field.validation_alias] = value.strip()
            if values:
                data[name] = values
        return data


class Settings(BaseSettings):
    """Every setting of the app, by concern. ``Settings()`` reads the environment; keyword
    arguments (a section, or a dict of some of its fields) win over it."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=True, extra="forbid")

    server: ServerSettings = ServerSettings()
    answering: AnsweringSettings = AnsweringSettings()
    chat: ChatSettings = ChatSettings()
    builds: BuildSettings = BuildSettings()
    queue: QueueSettings = QueueSettings()
    storage: StorageSettings = StorageSettings()
    space: SpaceSettings = SpaceSettings()
    ingest: IngestSettings = IngestSettings()
    archives: ArchiveSettings = ArchiveSettings()
    bundles: BundleSettings = BundleSettings()
    ocr: OcrSettings = OcrSettings()
    render: RenderSettings = RenderSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ):
        return init_settings, _Environment(settings_cls, case_sensitive=True)

    def changed(self, **sections: dict[str, Any]) -> "Settings":
        """A copy with some fields changed, validated as the environment's values are:
        ``settings.changed(answering={"focus": "cache"}, builds={"deep_read": True})``."""
        update = {}
        for name, fields in sections.items():
            current = getattr(self, name)
            try:
                update[name] = type(current).model_validate({**current.model_dump(), **fields})
            except ValidationError as exc:
                raise SettingsError(_one_line(exc, name)) from None
        return self.model_copy(update=update)


def variable(section: str, field: str) -> str:
    """The environment variable of ``section.field``."""
    return Settings.model_fields[section].annotation.model_fields[field].validation_alias


def _one_line(error: ValidationError, section: str | None = None) -> str:
    """The first error as one line: the variable, what it accepts, the value given
    (``section``: the section the error's fields are of, when it was validated alone)."""
    first = error.errors()[0]
    loc = ([section] if section else []) + [str(part) for part in first["loc"]]
    name = loc[-1] if loc else "a setting"
    if len(loc) >= 2 and loc[0] in Settings.model_fields:
        fields = Settings.model_fields[loc[0]].annotation.model_fields
        name = fields[loc[1]].validation_alias if loc[1] in fields else loc[1]
    kind, ctx = first["type"], first.get("ctx") or {}
    if kind == "value_error":
        reason = str(ctx.get("error", first["msg"]))
    elif kind in ("int_parsing", "int_from_float", "int_type"):
        reason = "must be a whole number"
    elif kind in ("float_parsing", "float_type", "finite_number"):
        reason = "must be a number"
    elif kind == "greater_than" and ctx.get("gt") == 0:
        reason = "must be positive"
    elif kind == "greater_than":
        reason = f"must be over {ctx.get('gt')}"
    elif kind == "greater_than_equal":
        reason = f"must be at least {ctx.get('ge')}"
    else:
        reason = first["msg"][:1].lower() + first["msg"][1:]
    given = first.get("input")
    shown = "" if isinstance(given, (dict, BaseModel)) else f", not {str(given).strip()[:40]!r}"
    more = len(error.errors()) - 1
    return f"{name} {reason}{shown}" + (f" (and {more} more setting{'s' if more > 1 else ''})" if more else "")


def read_settings(**given: Any) -> Settings:
    """Settings from the environment (``given`` sections win); :class:`SettingsError` in one
    line at the first bad value."""
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


_process: Settings | None = None
_lock = threading.RLock()


def load_settings() -> Settings:
    """The process's settings: the environment's, read and checked on first use and then kept
    (or those :func:`use_settings` made the process's). :class:`SettingsError` (one line) at a
    bad value."""
    with _lock:
        if _process is None:
            use_settings(read_settings())
        return _process


def use_settings(settings: Settings | None) -> Settings | None:
    """Make ``settings`` the process's (None: read the environment again at the next
    :func:`load_settings`); returns the settings it replaces (None when none were loaded). The
    library's per-process parts follow them: the page renderer's pool
    (:func:`homer.reading.formats.render.configure_pool`)."""
    global _process
    with _lock:
        previous, _process = _process, settings
        if settings is not None:
            from homer.reading.formats import render

            render.configure_pool(workers=settings.render.workers, memory_mb=settings.render.memory_mb)
    return previous


@contextmanager
def configured(**sections: dict[str, Any]) -> Iterator[Settings]:
    """Run a block under the process's settings with some fields changed
    (:meth:`Settings.changed`), then put the settings back: tests and benchmarks."""
    settings = load_settings().changed(**sections)
    previous = use_settings(settings)
    try:
        yield settings
    finally:
        use_settings(previous)


# --- the configuration table (app.settings_table renders it) ---------------------------------
def markdown_table() -> str:
    """Every setting as Markdown: one table per section (variable, default, what it does)."""
    return settings_table.markdown_table(Settings)


def with_table(page: str) -> str:
    """``page`` (Markdown) with :func:`markdown_table` between its markers."""
    return settings_table.with_table(page, markdown_table())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.settings", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the table of every setting (Markdown)")
    parser.add_argument(
        "--update", metavar="PAGE", help="rewrite the table between the markers of PAGE (docs/configuration.md)"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    if args.update:
        from pathlib import Path

        page = Path(args.update)
        page.write_text(with_table(page.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    try:
        settings = read_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in Settings.model_fields:
        for field, value in getattr(settings, name).model_dump().items():
            print(f"{variable(name, field)}={settings_table.shown(value)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
