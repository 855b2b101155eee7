"""Yes/no settings parse one way everywhere (:func:`homer.durable.env_flag`): 1/true/yes/on
are true, 0/false/no/off false, unset or empty the default, anything else refused at start
in one line naming the variable. Issue 22, finding 12: ``HOMER_LOCK_MODEL=0`` locked the
model, because app.py took any non-empty value for yes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from app_helpers import ROOT, running_app
from homer.durable import FLAGS, check_flags, env_flag


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("false", False), ("No", False), ("off", False),
])
def test_the_words_of_yes_and_no(monkeypatch, value, expected):
    monkeypatch.setenv("HOMER_LOCK_MODEL", value)
    assert env_flag("HOMER_LOCK_MODEL", not expected) is expected


@pytest.mark.parametrize("default", [True, False])
def test_unset_or_empty_is_the_default(monkeypatch, default):
    monkeypatch.delenv("HOMER_CITATIONS", raising=False)
    assert env_flag("HOMER_CITATIONS", default) is default
    monkeypatch.setenv("HOMER_CITATIONS", "  ")
    assert env_flag("HOMER_CITATIONS", default) is default


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_anything_else_is_refused_naming_the_variable(monkeypatch, name):
    for other in FLAGS:
        monkeypatch.delenv(other, raising=False)
    check_flags()
    monkeypatch.setenv(name, "maybe")
    with pytest.raises(ValueError) as refused:
        check_flags()
    message = str(refused.value)
    assert name in message and "'maybe'" in message and "\n" not in message


def test_the_app_refuses_a_flag_that_is_neither_at_start(tmp_path):
    """Before the store, the model or gradio: one line, exit status 1, nothing made."""
    home = tmp_path / "home"
    env = {**os.environ, "HOMER_HOME": str(home), "HOMER_LOCK_MODEL": "maybe", "HF_HUB_OFFLINE": "1"}
    env.pop("SPACE_ID", None)
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--model", "embedded"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "HOMER_LOCK_MODEL" in lines[0] and "'maybe'" in lines[0], done.stderr
    assert done.stdout == "" and not home.exists()  # refused before anything was loaded or stored


def test_lock_model_0_leaves_the_model_switchable(tmp_path, model_dir):
    with running_app(tmp_path / "home", model_dir, env={"HOMER_LOCK_MODEL": "0"}) as url:
        with urllib.request.urlopen(f"{url}config", timeout=30) as response:
            config = json.load(response)
    fields = [c["props"] for c in config["components"]
              if str(c.get("props", {}).get("label", "")).startswith("Model: embedded")]
    assert len(fields) == 1 and fields[0]["interactive"] is True, fields
