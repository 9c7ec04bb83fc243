"""Checks e2e/kind (the kind cluster kit) without Docker: the script parses and
fails early without its tools, every image the chart defaults to is built by
one of the image definitions in e2e/images (which the real-node rig builds and
runs with buildah), and those hold binaries the workspace has."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from render_chart import CHART, render_objects

REPO = CHART.parent.parent
KIT = REPO / "e2e" / "kind"
RUN = KIT / "run.sh"
IMAGES = REPO / "e2e" / "images"
BUILD = IMAGES / "build.sh"
TOOLS = ["docker", "kind", "helm", "kubectl", "curl", "cargo", "gcc"]


def dockerfiles() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(IMAGES.glob("*.Dockerfile"))}


def label_image(text: str) -> str | None:
    m = re.search(r'^LABEL\s+dev\.baton\.image="([^"]+)"', text, re.M)
    return m.group(1) if m else None


def workspace_bins() -> dict[str, set[str]]:
    """Package name -> its binary targets, from the workspace manifests."""
    root = tomllib.loads((REPO / "Cargo.toml").read_text())
    out = {}
    for member in root["workspace"]["members"]:
        manifest = tomllib.loads((REPO / member / "Cargo.toml").read_text())
        name = manifest["package"]["name"]
        bins = {b["name"] for b in manifest.get("bin", [])}
        if not bins and (REPO / member / "src" / "main.rs").is_file():
            bins = {name}
        out[name] = bins
    return out


def chart_default_images() -> set[str]:
    images = set()
    for obj in render_objects():
        if obj["kind"] == "Deployment":
            images |= {c["image"] for c in obj["spec"]["template"]["spec"]["containers"]}
        if obj["kind"] == "KmeshUpgrade":
            images |= {obj["spec"]["agentImage"], obj["spec"]["emptyImage"]}
    return images


def test_run_script_parses():
    result = subprocess.run(["bash", "-n", str(RUN)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def run_with_path(path: Path) -> subprocess.CompletedProcess:
    bash = shutil.which("bash")
    assert bash
    return subprocess.run(
        [bash, str(RUN)], env={"PATH": str(path)}, capture_output=True, text=True, timeout=60
    )


def test_run_script_names_every_missing_tool_and_touches_nothing(tmp_path):
    result = run_with_path(tmp_path)
    assert result.returncode == 2, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("e2e/kind/run.sh: missing on PATH:"), result.stderr
    for tool in TOOLS:
        assert tool in first
    assert result.stdout == ""


def test_run_script_needs_a_reachable_docker_daemon(tmp_path):
    calls = tmp_path / "calls"
    for tool in TOOLS:
        stub = tmp_path / tool
        # docker info fails as without a daemon; every call is logged.
        status = 1 if tool == "docker" else 0
        stub.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {calls}\nexit {status}\n")
        stub.chmod(0o755)
    result = run_with_path(tmp_path)
    assert result.returncode == 2
    assert "daemon is not reachable" in result.stderr, result.stderr
    assert calls.read_text().splitlines() == ["docker info"], "nothing but the check ran"


def test_every_default_chart_image_is_built_by_a_dockerfile():
    built = {label_image(text): name for name, text in dockerfiles().items()}
    assert None not in built, f"a Dockerfile lacks LABEL dev.baton.image: {built}"
    for image in sorted(chart_default_images()):
        repository = image.rsplit(":", 1)[0]
        assert repository in built, f"{image}: no e2e/images Dockerfile labels dev.baton.image={repository}"


def test_run_script_builds_the_images_with_docker():
    script = RUN.read_text()
    assert re.search(r'e2e/images/build\.sh" --tool docker --tag kind', script), "run.sh does not call build.sh"


def test_build_script_builds_every_dockerfile_under_its_labelled_name():
    script = BUILD.read_text()
    for name, text in dockerfiles().items():
        m = re.search(rf"^\s*build {re.escape(name)} (\S+) \"([^\"]+)\"( .*)?$", script, re.M)
        assert m, f"build.sh does not build {name}"
        assert m.group(2).rsplit(":", 1)[0] == label_image(text), f"{name}: tagged {m.group(2)}"


@pytest.mark.parametrize("name", [n for n, t in dockerfiles().items() if "/bin/baton-" in t])
def test_image_entrypoints_are_staged_workspace_binaries(name):
    text = dockerfiles()[name]
    script = BUILD.read_text()
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"', text, re.M).group(1)
    context = re.search(rf"^\s*build {re.escape(name)} (\S+) ", script, re.M).group(1)
    staged = re.search(rf"^\s*stage {re.escape(context)} \S+ (\S+)$", script, re.M)
    assert staged and staged.group(1) == entry, f"{name}: entrypoint {entry} is not what build.sh stages"
    all_bins = set().union(*workspace_bins().values())
    assert Path(entry).name in all_bins, f"{name}: {entry} is not a workspace binary"
    assert "FROM scratch" in text, f"{name}: images hold only the staged rootfs"


def test_the_empty_image_is_the_static_pause():
    script = BUILD.read_text()
    assert re.search(r"gcc -static .*pause\.c", script), "the pause program is built static"
    assert re.search(r"^stage empty \S+ /pause$", script, re.M)
