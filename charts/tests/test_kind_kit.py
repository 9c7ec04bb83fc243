"""Checks e2e/kind (the kind cluster kit) without Docker: the script parses and
fails early without its tools, every image the chart defaults to is built by
one of the kit's Dockerfiles, and those build binaries the workspace has."""

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
TOOLS = ["docker", "kind", "helm", "kubectl", "curl"]


def dockerfiles() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(KIT.glob("Dockerfile.*")) if p.suffix != ".dockerignore"}


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
        assert repository in built, f"{image}: no e2e/kind Dockerfile labels dev.baton.image={repository}"


def test_run_script_builds_every_dockerfile_under_its_labelled_name():
    script = RUN.read_text()
    registry = re.search(r"^registry=(\S+)$", script, re.M).group(1)
    named = {f"{registry}/{n}" for n in re.findall(r"\$registry/([\w-]+)", script)}
    for name, text in dockerfiles().items():
        assert re.search(rf"^\s*build {re.escape(name)} ", script, re.M), f"run.sh does not build {name}"
        assert label_image(text) in named, f"run.sh does not tag {name} as {label_image(text)}"


@pytest.mark.parametrize("name", [n for n, t in dockerfiles().items() if "cargo build" in t])
def test_dockerfiles_build_binaries_of_the_workspace(name):
    text = dockerfiles()[name]
    bins = workspace_bins()
    packages = re.findall(r"cargo build [^\n]*-p (\S+)", text)
    targets = re.findall(r"cargo build [^\n]*--bin (\S+)", text)
    assert packages and len(packages) == len(targets), text
    for package, target in zip(packages, targets):
        assert package in bins, f"{name}: no workspace package {package}"
        assert target in bins[package], f"{name}: {package} has no binary {target} ({bins[package]})"
    copied = set(re.findall(r"cp target/release/(\S+) ", text))
    assert copied == set(targets), f"{name}: copies {copied}, builds {targets}"
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"', text, re.M).group(1)
    assert Path(entry).name in targets, f"{name}: entrypoint {entry} is not a built binary"
    assert "--locked" in text, "the image builds what Cargo.lock pins"


def test_the_empty_image_is_a_pinned_pause():
    text = dockerfiles()["Dockerfile.empty"]
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.fullmatch(r"registry\.k8s\.io/pause:\d+\.\d+", base), base
