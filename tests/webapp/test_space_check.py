"""The Space configuration check: this repository passes it, and each rule catches the
mistake it is there for (on copies of the real files, altered one at a time)."""

import shutil

import pytest

from app import space_check
from homer import paths

ROOT = space_check.Path(__file__).resolve().parents[2]


def test_this_repository_boots_as_a_zerogpu_space(capsys):
    assert space_check.main(["--root", str(ROOT)]) == 0, capsys.readouterr().out


@pytest.fixture()
def repo(tmp_path):
    for name in ("README.md", "requirements.txt", "packages.txt", "app.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _edit(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    "name, old, new, expected",
    [
        ("README.md", 'python_version: "3.12.12"', 'python_version: "3.11"', "python_version"),
        ("README.md", 'python_version: "3.12.12"', "python_version: 3.10", "python_version"),  # YAML float
        ("README.md", "sdk: gradio", "sdk: docker", "sdk must be gradio"),
        ("README.md", "sdk_version: 6.31.0", "sdk_version: 6.30.0", "sdk_version"),
        (
            "README.md",
            "suggested_hardware: zero-a10g",
            "suggested_hardware: zero-a10g\nsuggested_storage: small",
            "suggested_storage",
        ),
        ("README.md", "suggested_hardware: zero-a10g", "suggested_hardware: gpu-huge", "suggested_hardware"),
        (
            "requirements.txt",
            'torch>=2.8,<2.12; python_version != "3.11"',
            'torch>=2.8; python_version != "3.11"',
            "torch on Python 3.12.12",
        ),
        ("requirements.txt", 'torch>=2.8,<2.12; python_version != "3.11"', "", "exactly one torch"),
        ("packages.txt", "tesseract-ocr\n", "", "tesseract-ocr"),
        (
            "app.py",
            "from __future__ import annotations\n",
            "from __future__ import annotations\nimport torch\n",
            "import spaces",
        ),
    ],
)
def test_each_rule_catches_its_mistake(repo, name, old, new, expected):
    _edit(repo / name, old, new)
    problems = [str(p) for p in space_check.check(repo)]
    assert any(expected in p for p in problems), problems


def test_a_promise_of_persistent_data_is_caught(repo):
    with open(repo / "README.md", "a", encoding="utf-8") as fh:
        fh.write("\nAttach persistent storage: the store lives under /data/homer.\n")
    assert any("/data" in str(p) for p in space_check.check(repo))


def test_the_footer_says_whether_the_library_persists(tmp_path, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert paths.home_persistence(tmp_path)[0] is True  # this machine's own disk
    monkeypatch.setenv("SPACE_ID", "team/homer-chat")
    persistent, line = paths.home_persistence(tmp_path / "home")
    mount = paths._mount_of(tmp_path)
    assert persistent == (mount is not None and mount[1] not in paths.EPHEMERAL_FILESYSTEMS)
    if not persistent:
        assert "vanishes" in line and "HOMER_HOME" in line
