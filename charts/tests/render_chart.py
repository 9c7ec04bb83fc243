"""Render the Baton chart with real Helm (the helm-python-sdk binding of Helm's Go SDK).

Used by the pytest suite and by the operator's API-server tests, which apply
the output with a server-side dry run:

    python3 charts/tests/render_chart.py [--namespace NS] [--set-json JSON] > all.yaml

The output holds the chart's CRDs first, then every rendered template, as one
multi-document YAML stream (what `helm install` would send, in that order).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parent.parent / "baton"
RELEASE = "baton"
NAMESPACE = "baton-system"


def render_files(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=release, namespace=namespace, is_install=True)


def crd_documents() -> list[dict[str, Any]]:
    """The CRDs the chart ships under crds/."""
    with helm.Chart.load(CHART) as chart:
        return [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]


def render_objects(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """Every object the templates produce, in template-path order."""
    objects = []
    for path, text in sorted(render_files(values, release=release, namespace=namespace).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--release", default=RELEASE)
    parser.add_argument("--set-json", default=None, help="values as one JSON object")
    args = parser.parse_args()
    values = json.loads(args.set_json) if args.set_json else None
    docs = crd_documents() + render_objects(values, release=args.release, namespace=args.namespace)
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
