"""Does this repository boot as a Hugging Face Space under the 2026 rules? Checks the Space
configuration (the YAML front matter of README.md), requirements.txt, packages.txt and app.py
against what Hugging Face's own documentation says today, ZeroGPU first (a free account can
host only ZeroGPU Gradio Spaces since 2026-07):

* the SDK is Gradio and ``sdk_version`` is the gradio version requirements.txt pins;
* ``python_version`` is one ZeroGPU runs (3.10.13 or 3.12.12), quoted (YAML reads 3.10 as 3.1),
  and every pinned requirement installed here admits it (its ``Requires-Python``);
* on that Python, requirements.txt asks for a torch ZeroGPU supports (2.8 to 2.11) and only
  such a one;
* ``suggested_storage`` is absent (persistent storage is gone: it is ignored), and nothing
  promises a persistent ``/data`` folder; ``suggested_hardware``, when set, is a real flavour;
* app.py imports ``spaces`` before anything that may initialise CUDA;
* the Debian packages the app uses (Tesseract for scanned PDFs) are named in packages.txt.

    python -m app.space_check [--root FOLDER]

Prints one line per broken rule and exits 1, or "ok" and exits 0. Runs offline: a
requirement's ``Requires-Python`` is read from the distribution installed here when its
version is the pinned one (a requirement not installed here is not checked for it)."""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ZEROGPU_PYTHONS = ("3.10.13", "3.12.12")
ZEROGPU_TORCH = SpecifierSet(">=2.8,<2.12")
# Hardware flavours a Space may suggest (huggingface_hub's SpaceHardware, 2026), ZeroGPU first.
HARDWARE = {
    "zero-a10g",
    "cpu-basic",
    "cpu-upgrade",
    "cpu-xl",
    "t4-small",
    "t4-medium",
    "l4x1",
    "l4x4",
    "l40sx1",
    "l40sx4",
    "l40sx8",
    "a10g-small",
    "a10g-large",
    "a10g-largex2",
    "a10g-largex4",
    "a100-large",
    "a100x4",
    "a100x8",
    "h100",
    "h100x8",
    "inf2x6",
}
DEBIAN_PACKAGES = ("tesseract-ocr",)  # what the app runs from Debian (OCR of scanned PDFs)
CUDA_IMPORTS = {"torch", "transformers", "accelerate", "homer", "app", "storage"}


@dataclass
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def front_matter(readme: str) -> dict:
    """The YAML block between the first two ``---`` lines of README.md."""
    match = re.match(r"---\s*\n(.*?)\n---\s*\n", readme, re.S)
    if not match:
        raise ValueError("README.md does not start with a --- YAML block (the Space configuration)")
    data = yaml.safe_load(match.group(1))
    if not isinstance(data, dict):
        raise ValueError("the README's front matter is not a mapping")
    return data


def requirements(text: str) -> list[Requirement]:
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            out.append(Requirement(line))
        except InvalidRequirement as exc:
            raise ValueError(f"requirements.txt: cannot parse {line!r} ({exc})") from None
    return out


def space_environment(python: str) -> dict:
    """The marker environment of a Space's Linux x86_64 machine on ``python``."""
    env = default_environment()
    env.update(
        python_version=".".join(python.split(".")[:2]),
        python_full_version=python,
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def _admitted_torch(spec: SpecifierSet) -> list[Version]:
    """Which torch releases (2.0 to 2.29, patch 0 to 9) ``spec`` admits."""
    return [
        v
        for v in (Version(f"2.{minor}.{patch}") for minor in range(30) for patch in range(10))
        if spec.contains(v, prereleases=False)
    ]


def _pinned(req: Requirement) -> str | None:
    specs = list(req.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def _imports_before_spaces(app_py: str) -> list[str]:
    """Top-level imports of app.py that may touch CUDA and come before ``import spaces``."""
    tree = ast.parse(app_py)
    early = []
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Try):
            inner = [n for n in node.body if isinstance(n, ast.Import)]
            if any(a.name == "spaces" for n in inner for a in n.names):
                return early
        if "spaces" in names:
            return early
        early += [n for n in names if n.split(".")[0] in CUDA_IMPORTS]
    return early + ["(no `import spaces` at the top level)"]


def check(root: Path) -> list[Problem]:
    problems: list[Problem] = []
    readme_text = (root / "README.md").read_text(encoding="utf-8")
    try:
        config = front_matter(readme_text)
    except ValueError as exc:
        return [Problem("README.md", str(exc))]
    try:
        reqs = requirements((root / "requirements.txt").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [Problem("requirements.txt", str(exc))]

    if config.get("sdk") != "gradio":
        problems.append(
            Problem("README.md", f"sdk must be gradio (ZeroGPU runs Gradio Spaces only), not {config.get('sdk')!r}")
        )
    python = config.get("python_version")
    if not isinstance(python, str) or python not in ZEROGPU_PYTHONS:
        problems.append(
            Problem(
                "README.md",
                f"python_version must be one ZeroGPU runs, quoted ({' or '.join(ZEROGPU_PYTHONS)}), not {python!r}",
            )
        )
        python = ZEROGPU_PYTHONS[-1]
    env = space_environment(python)
    active = [r for r in reqs if r.marker is None or r.marker.evaluate(env)]
    gradio = [r for r in active if r.name.lower() == "gradio"]
    if not gradio or _pinned(gradio[0]) is None:
        problems.append(Problem("requirements.txt", "gradio must be pinned (==) so the Space runs what was tested"))
    elif str(config.get("sdk_version")) != _pinned(gradio[0]):
        problems.append(
            Problem(
                "README.md",
                f"sdk_version {config.get('sdk_version')!r} is not the gradio "
                f"requirements.txt pins ({_pinned(gradio[0])})",
            )
        )
    torch = [r for r in active if r.name.lower() == "torch"]
    if len(torch) != 1:
        problems.append(
            Problem(
                "requirements.txt", f"exactly one torch requirement must apply on Python {python} (found {len(torch)})"
            )
        )
    else:
        admitted = _admitted_torch(torch[0].specifier)
        outside = [str(v) for v in admitted if not ZEROGPU_TORCH.contains(v)]
        if not admitted or outside:
            problems.append(
                Problem(
                    "requirements.txt",
                    f"torch on Python {python} must be a release ZeroGPU supports "
                    f"({ZEROGPU_TORCH}); {torch[0]} admits "
                    f"{', '.join(outside[:3]) or 'none'}",
                )
            )
    for req in active:
        version = _pinned(req)
        if version is None:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        needs = dist.metadata.get("Requires-Python")
        if dist.version == version and needs and not SpecifierSet(needs).contains(python):
            problems.append(
                Problem("requirements.txt", f"{req.name}=={version} needs Python {needs}, not the Space's {python}")
            )

    if "suggested_storage" in config:
        problems.append(
            Problem(
                "README.md",
                "suggested_storage is ignored since persistent storage was retired; "
                "mount a Storage Bucket and set HOMER_HOME instead",
            )
        )
    hardware = config.get("suggested_hardware")
    if hardware is not None and hardware not in HARDWARE:
        problems.append(Problem("README.md", f"suggested_hardware {hardware!r} is not a Space hardware flavour"))
    for name in ("README.md", "app.py", "homer/paths.py"):
        path = root / name
        if path.exists() and re.search(r"/data/homer|persistent storage[^.\n]*/data", path.read_text(encoding="utf-8")):
            problems.append(Problem(name, "promises a persistent /data folder, which Spaces no longer have"))

    app_py = root / "app.py"
    if app_py.exists():
        early = _imports_before_spaces(app_py.read_text(encoding="utf-8"))
        if early:
            problems.append(
                Problem(
                    "app.py",
                    "import spaces (in a try block) before anything that may initialise "
                    f"CUDA; found first: {', '.join(early)}",
                )
            )
    packages = root / "packages.txt"
    listed = set(packages.read_text(encoding="utf-8").split()) if packages.exists() else set()
    for package in DEBIAN_PACKAGES:
        if package not in listed:
            problems.append(
                Problem("packages.txt", f"must name {package} (the Space installs Debian packages from it)")
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.space_check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=str(Path(__file__).resolve().parent.parent),
        help="the repository to check (default: this one)",
    )
    args = parser.parse_args(argv)
    problems = check(Path(args.root))
    for problem in problems:
        print(problem)
    if not problems:
        print("ok: the Space configuration follows the 2026 rules (ZeroGPU)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
