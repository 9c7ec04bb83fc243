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
            "Job": 1,
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
    assert rules_of(leader) == {
        ("coordination.k8s.io", "leases"): ["create", "get", "update"],
        # For the uninstall hook, in the release namespace only.
        ("baton.dev", "kmeshupgrades"): ["delete"],
    }


def test_agent_rbac_reads_services_and_writes_only_pod_status(default_objects):
    role = one(default_objects, "ClusterRole", "-agent")
    assert rules_of(role) == {
        ("", "services"): ["list", "watch"],
        ("discovery.k8s.io", "endpointslices"): ["list", "watch"],
    }
    status = one(default_objects, "Role", "-agent-status")
    assert rules_of(status) == {
        ("", "pods"): ["get", "watch"],
        ("", "pods/status"): ["get", "patch"],
        # Is my owner being deleted? (datapath teardown on uninstall only)
        ("baton.dev", "kmeshupgrades"): ["get"],
    }


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
                "pod": {"extraArgs": ["--handover-timeout-ms=20000"], "priorityClassName": ""},
                "strategy": {
                    "maxUnavailable": "25%",
                    "partition": 4,
                    "paused": True,
                    "handoverTimeoutSeconds": 30,
                    "onFailure": "Rollback",
                    "preflight": {"mode": "EachNode", "timeoutSeconds": 60},
                    "canary": {"nodes": 2, "soakSeconds": 300},
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
        "preflight": {"mode": "EachNode", "timeoutSeconds": 60},
        "canary": {"nodes": 2, "soakSeconds": 300},
    }
    default = one(render_objects(), "KmeshUpgrade")["spec"]["strategy"]
    assert default["preflight"] == {"mode": "AllNodes", "timeoutSeconds": 120}
    assert "canary" not in default, "no canary unless asked for"
    assert cr["spec"]["pod"]["extraArgs"] == ["--handover-timeout-ms=20000"]
    assert "priorityClassName" not in cr["spec"]["pod"]
    assert isinstance(one(render_objects(), "KmeshUpgrade")["spec"]["strategy"]["maxUnavailable"], int)


def test_the_default_kmeshupgrade_can_be_turned_off():
    objects = render_objects({"upgrade": {"enabled": False}})
    assert by_kind(objects, "KmeshUpgrade") == []
    # Nothing of the release's to uninstall: KmeshUpgrades of your own are yours to delete.
    assert by_kind(objects, "Job") == []
    assert len(by_kind(objects, "Deployment")) == 1


def test_agent_pods_default_to_the_host_network_without_api_server_or_cgroup(default_objects):
    pod = one(default_objects, "KmeshUpgrade")["spec"]["pod"]
    assert pod["hostNetwork"] is True
    assert "apiServer" not in pod
    assert "cgroup" not in pod


def test_agent_values_flow_into_the_kmeshupgrade():
    objects = render_objects(
        {
            "agent": {
                "apiServer": {"host": "192.0.2.10", "port": 6443},
                "hostNetwork": False,
                "cgroup": "/sys/fs/cgroup/unified/baton-test",
            }
        }
    )
    pod = one(objects, "KmeshUpgrade")["spec"]["pod"]
    assert pod["apiServer"] == {"host": "192.0.2.10", "port": 6443}
    assert pod["hostNetwork"] is False
    assert pod["cgroup"] == "/sys/fs/cgroup/unified/baton-test"


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def operator_pods(objects):
    """(what, pod spec) of the operator Deployment and the uninstall hook Job."""
    return [
        ("Deployment", one(objects, "Deployment")["spec"]["template"]["spec"]),
        ("Job", one(objects, "Job")["spec"]["template"]["spec"]),
    ]


def test_operator_placement_and_api_server_reach_the_deployment_and_the_hook():
    objects = render_objects(
        {
            "operator": {
                "nodeName": "cp-1",
                "hostNetwork": True,
                "apiServer": {"host": "127.0.0.1", "port": 6443},
                "env": [{"name": "RUST_BACKTRACE", "value": "1"}],
                "tolerations": [{"operator": "Exists"}],
            }
        }
    )
    for what, pod in operator_pods(objects):
        assert pod["nodeName"] == "cp-1", what
        assert pod["hostNetwork"] is True, what
        assert pod["dnsPolicy"] == "ClusterFirstWithHostNet", what
        assert pod["tolerations"] == [{"operator": "Exists"}], what
        assert pod["serviceAccountName"].endswith("-operator"), what
        assert pod["securityContext"]["runAsNonRoot"] is True, what
        (container,) = pod["containers"]
        env = env_of(container)
        assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1", what
        assert env["KUBERNETES_SERVICE_PORT"] == "6443", what
        assert env["RUST_BACKTRACE"] == "1", what
        names = [e["name"] for e in container["env"]]
        assert names.index("RUST_BACKTRACE") > names.index("KUBERNETES_SERVICE_HOST"), (
            f"{what}: operator.env comes last so that it wins"
        )


def test_operator_defaults_leave_placement_to_the_cluster(default_objects):
    for what, pod in operator_pods(default_objects):
        for key in ("nodeName", "hostNetwork", "dnsPolicy"):
            assert key not in pod, (what, key)
        (container,) = pod["containers"]
        assert "KUBERNETES_SERVICE_HOST" not in env_of(container), what
    assert "strategy" not in one(default_objects, "Deployment")["spec"]


def test_operator_on_the_host_network_rolls_without_surge():
    # A surge pod would need the metrics port the old pod holds on the node: Pending forever.
    deployment = one(render_objects({"operator": {"hostNetwork": True}}), "Deployment")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def test_uninstall_hook_deletes_the_release_kmeshupgrade_before_anything_else(default_objects):
    job = one(default_objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-delete"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == one(default_objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["args"] == ["uninstall", f"--namespace={NAMESPACE}", "--name=baton", "--timeout=120s"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Its account may delete the release's KmeshUpgrade: the operator's Role in that namespace.
    binding = one(default_objects, "RoleBinding", "-operator-leader")
    assert {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE} in binding["subjects"]

    custom = one(render_objects({"upgrade": {"name": "mesh", "uninstallTimeout": "5m"}}), "Job")
    assert custom["spec"]["template"]["spec"]["containers"][0]["args"][2:] == ["--name=mesh", "--timeout=5m"]


GOOD = [
    {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": 3}}},
    {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": "10%"}}},
    {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": "100%", "handoverTimeoutSeconds": 3600}}},
    {"operator": {"replicas": 2, "image": {"repository": "x", "tag": "1"}, "metricsPort": 8080}},
    {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": "007%"}}},
    {"operator": {"hostNetwork": True, "nodeName": "n1", "apiServer": {"host": "fd00::1", "port": 443}, "env": [{"name": "X", "value": "y"}]}},
    {"agent": {"apiServer": {"host": "10.0.0.1", "port": 6443}, "hostNetwork": False, "cgroup": "/sys/fs/cgroup/t"}},
    {"upgrade": {"enabled": True, "uninstallTimeout": "1h"}},
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
    "maxUnavailable 150%": {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": "150%"}}},
    "maxUnavailable 101%": {"upgrade": {"enabled": True, "strategy": {"maxUnavailable": "101%"}}},
    "agent apiServer port 0": {"agent": {"apiServer": {"host": "10.0.0.1", "port": 0}}},
    "agent apiServer typo": {"agent": {"apiServer": {"hots": "10.0.0.1"}}},
    "agent hostNetwork string": {"agent": {"hostNetwork": "yes"}},
    "relative cgroup": {"agent": {"cgroup": "sys/fs/cgroup"}},
    "operator env without name": {"operator": {"env": [{"value": "x"}]}},
    "operator apiServer URL": {"operator": {"apiServer": {"host": "https://10.0.0.1"}}},
    "uninstall timeout words": {"upgrade": {"enabled": True, "uninstallTimeout": "two minutes"}},
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
