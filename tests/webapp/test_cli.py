import pytest

"""The ``homer`` command on a tiny model saved as a local folder (the ``--model`` path)."""

import json
import subprocess
import sys

from conftest import tiny_model, tiny_tokenizer


def homer(*args, home):
    return subprocess.run(
        [sys.executable, "-m", "homer", *map(str, args)],
        capture_output=True,
        text=True,
        env={"HOMER_HOME": str(home), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


@pytest.mark.e2e
def test_build_ask_info(model_dir, tmp_path):
    doc = tmp_path / "book.txt"
    doc.write_text("The lighthouse keeper was named Ada. " * 60)
    out = tmp_path / "book.homer.safetensors"
    r = homer("build", doc, "-o", out, "--model", model_dir, "--significance", "uncalibrated", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.exists() and "cached" in r.stdout
    r = homer("info", out, home=tmp_path)
    info = json.loads(r.stdout)
    assert info["context_tokens"] > info["kept_context_tokens"] > 0
    r = homer(
        "ask",
        out,
        "Who kept the lighthouse?",
        "And then?",
        "--model",
        model_dir,
        "--max-new-tokens",
        "4",
        home=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ") == 2 and "first token" in r.stderr


@pytest.mark.e2e
def test_bad_files_are_refused_with_a_reason(model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = homer("build", empty, "--model", model_dir, home=tmp_path)
    assert r.returncode == 2 and "empty" in r.stderr
    binary = tmp_path / "photo.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00" * 50)
    r = homer("build", binary, "--model", model_dir, home=tmp_path)
    assert r.returncode == 2 and "binary" in r.stderr
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n garbage")
    r = homer("build", broken, "--model", model_dir, home=tmp_path)
    assert r.returncode == 2 and "PDF" in r.stderr


@pytest.mark.e2e
def test_a_cache_from_another_model_is_refused(model_dir, tmp_path):
    doc = tmp_path / "a.txt"
    doc.write_text("Some words here. " * 60)
    out = tmp_path / "a.homer.safetensors"
    assert homer("build", doc, "-o", out, "--model", model_dir, home=tmp_path).returncode == 0
    other = tmp_path / "other-model"
    tiny_model("llama", window=1024, seed=5).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    r = homer("ask", out, "Hi?", "--model", other, home=tmp_path)
    assert r.returncode == 2 and "was built by model" in r.stderr


@pytest.mark.e2e
def test_rope_scaled_build_is_recorded_and_reused_by_ask(model_dir, tmp_path):
    doc = tmp_path / "long.txt"
    doc.write_text("A rope-scaled reading of a short text. " * 80)
    out = tmp_path / "long.homer.safetensors"
    r = homer(
        "build",
        doc,
        "-o",
        out,
        "--model",
        model_dir,
        "--rope",
        "yarn:2",
        "--significance",
        "uncalibrated",
        home=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(homer("info", out, home=tmp_path).stdout)
    assert '"yarn"' in info["rope_parameters"] and info["settings"]["max_chunk_len"] == 1024
    r = homer("ask", out, "What?", "--model", model_dir, "--max-new-tokens", "2", home=tmp_path)
    assert r.returncode == 0, r.stderr  # the YaRN model is rebuilt from the cache's metadata
