"""Lints and renders charts/baton with real Helm and checks what comes out."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from render_chart import CHART, NAMESPACE, crd_documents, render_objects

REPO = CHART.parent.parent


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name_suffix=""):
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def rules_of(role):
    """{(apiGroup, resource): sorted verbs} of a Role/ClusterRole."""
    out = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out[(group, resource)] = sorted(rule["verbs"])
    return out


@pytest.fixture(scope="module")
def default_objects():
    return render_objects()


def test_lint_has_no_warnings_or_errors():
    report = helm.lint(CHART, strict=True, kube_version="v1.34.0")
    assert report["errors"] == []
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious


def test_chart_crd_is_the_generated_one():
    generated = (REPO / "crds" / "kmeshupgrade.yaml").read_text()
    with helm.Chart.load(CHART) as chart:
        crds = chart.crds
    assert [c["filename"] for c in crds] == ["baton/crds/kmeshupgrade.yaml"]
    assert crds[0]["data"] == generated, (
        "charts/baton/crds/kmeshupgrade.yaml differs from crds/kmeshupgrade.yaml; regenerate both with "
        "`cargo run -p baton-operator -- crd -o <file>`"
    )
    (crd,) = crd_documents()
    assert crd["metadata"]["name"] == "kmeshupgrades.baton.dev"


def test_default_render_has_exactly_the_expected_objects(default_objects):
    kinds = Counter(o["kind"] for o in default_objects)
    assert kinds == Counter(
        {
            "ServiceAccount": 2,
            "ClusterRole": 2,
            "ClusterRoleBinding": 2,
            "Role": 2,
            "RoleBinding": 2,
            "Deployment": 1,
            "KmeshUpgrade": 1,
        }
    )
    for obj in default_objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


def test_operator_rbac_is_least_privilege(default_objects):
    role = one(default_objects, "ClusterRole", "-operator")
    assert rules_of(role) == {
        ("", "pods"): ["create", "delete", "get", "list", "patch", "watch"],
        ("", "nodes"): ["get", "list", "watch"],
        ("", "events"): ["create", "patch"],
        ("events.k8s.io", "events"): ["create", "patch"],
        ("baton.dev", "kmeshupgrades"): ["get", "list", "watch"],
        ("baton.dev", "kmeshupgrades/status"): ["get", "patch", "update"],
    }
    leader = one(default_objects, "Role", "-operator-leader")
    assert rules_of(leader) == {("coordination.k8s.io", "leases"): ["create", "get", "update"]}


def test_agent_rbac_reads_services_and_writes_only_pod_status(default_objects):
    role = one(default_objects, "ClusterRole", "-agent")
    assert rules_of(role) == {
        ("", "services"): ["list", "watch"],
        ("discovery.k8s.io", "endpointslices"): ["list", "watch"],
    }
    status = one(default_objects, "Role", "-agent-status")
    assert rules_of(status) == {("", "pods"): ["get"], ("", "pods/status"): ["get", "patch"]}


def test_no_role_uses_wildcards_or_touches_secrets(default_objects):
    for role in by_kind(default_objects, "ClusterRole") + by_kind(default_objects, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert not {"secrets", "configmaps"} & set(rule["resources"]), rule


def test_every_binding_points_at_a_rendered_role_and_service_account(default_objects):
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind(default_objects, "ServiceAccount")}
    roles = {(o["kind"], o["metadata"]["name"]) for o in by_kind(default_objects, "ClusterRole") + by_kind(default_objects, "Role")}
    bindings = by_kind(default_objects, "ClusterRoleBinding") + by_kind(default_objects, "RoleBinding")
    for binding in bindings:
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles, binding
        for subject in binding["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts, subject


def test_operator_deployment_runs_locked_down_with_its_account(default_objects):
    deployment = one(default_objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(default_objects, "ServiceAccount", "-operator")["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/baton-dev/baton-operator:0.1.0"
    assert container["args"][0] == "run"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_images_come_from_values():
    objects = render_objects(
        {
            "operator": {"image": {"repository": "reg.example/op", "tag": "v9"}},
            "agent": {
                "image": {"repository": "reg.example/agent", "tag": "v2.1"},
                "emptyImage": {"repository": "reg.example/empty", "tag": 3},
            },
        }
    )
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "reg.example/op:v9"
    spec = one(objects, "KmeshUpgrade")["spec"]
    assert spec["agentImage"] == "reg.example/agent:v2.1"
    assert spec["emptyImage"] == "reg.example/empty:3"


def test_strategy_and_pod_values_flow_into_the_kmeshupgrade():
    objects = render_objects(
        {
            "upgrade": {
                "name": "mesh",
                "nodeSelector": {"baton.dev/mesh": "on"},
                "pod": {"extraArgs": ["--log=debug"], "priorityClassName": ""},
                "strategy": {
                    "maxUnavailable": "25%",
                    "partition": 4,
                    "paused": True,
                    "handoverTimeoutSeconds": 30,
                    "onFailure": "Rollback",
                },
            }
        }
    )
    cr = one(objects, "KmeshUpgrade")
    assert cr["metadata"]["name"] == "mesh"
    assert cr["spec"]["nodeSelector"] == {"matchLabels": {"baton.dev/mesh": "on"}}
    assert cr["spec"]["strategy"] == {
        "maxUnavailable": "25%",
        "partition": 4,
        "paused": True,
        "handoverTimeoutSeconds": 30,
        "onFailure": "Rollback",
    }
    assert cr["spec"]["pod"]["extraArgs"] == ["--log=debug"]
    assert "priorityClassName" not in cr["spec"]["pod"]
    assert isinstance(one(render_objects(), "KmeshUpgrade")["spec"]["strategy"]["maxUnavailable"], int)


def test_the_default_kmeshupgrade_can_be_turned_off():
    objects = render_objects({"upgrade": {"enabled": False}})
    assert by_kind(objects, "KmeshUpgrade") == []
    assert len(by_kind(objects, "Deployment")) == 1


GOOD = [
    {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": 3}}},
    {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": "10%"}}},
    {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": "100%", "handoverTimeoutSeconds": 3600}}},
    {"operator": {"replicas": 2, "image": {"repository": "x", "tag": "1"}, "metricsPort": 8080}},
]

BAD = {
    "maxUnavailable zero": {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": 0}}},
    "maxUnavailable 0%": {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": "0%"}}},
    "maxUnavailable words": {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": "ten"}}},
    "negative partition": {"upgrade": {"enabled": True, "strategy": {"partition": -1}}},
    "timeout zero": {"upgrade": {"enabled": True, "strategy": {"handoverTimeoutSeconds": 0}}},
    "timeout too long": {"upgrade": {"enabled": True, "strategy": {"handoverTimeoutSeconds": 3601}}},
    "unknown onFailure": {"upgrade": {"enabled": True, "strategy": {"onFailure": "Explode"}}},
    "typo at top level": {"opertor": {}},
    "typo in strategy": {"upgrade": {"enabled": True, "strategy": {"maxUnavaliable": 1}}},
    "no replicas": {"operator": {"replicas": 0}},
    "empty image repository": {"agent": {"image": {"repository": ""}}},
    "bad CR name": {"upgrade": {"enabled": True, "name": "Not_A_Name"}},
}


@pytest.mark.parametrize("values", GOOD)
def test_schema_accepts_good_values(values):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values(copy.deepcopy(values)))
    assert render_objects(values)


@pytest.mark.parametrize("values", BAD.values(), ids=BAD.keys())
def test_schema_rejects_bad_values(values):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(chart.merge_values(copy.deepcopy(values)))
    # A real install renders through the same schema check.
    with pytest.raises(helm.HelmError):
        render_objects(values)


def test_render_script_emits_crds_first(tmp_path: Path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("render_chart.py")), "--namespace", "mesh"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert docs[0]["kind"] == "CustomResourceDefinition"
    assert {d["kind"] for d in docs[1:]} >= {"Deployment", "KmeshUpgrade"}
    assert one(docs, "KmeshUpgrade")["metadata"]["namespace"] == "mesh"
