"""The deployment files in cluster/: valid for the tools that read them, pinned like the project."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def project_pins() -> tuple[dict[str, Requirement], dict[str, str]]:
    """pyproject.toml's requirements and constraints.txt's exact pins, by package name."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {r.name: r for r in map(Requirement, deps)}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return reqs, pins


def test_aws_launcher_config_validates_against_the_installed_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    # What `ray up` does before it calls AWS: merge Ray's AWS defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(cfg)))

    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # a CPU head
    gpu = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    families = {t["node_config"]["InstanceType"].split(".")[0] for t in gpu.values()}
    assert {"g5", "p5"} <= families
    for t in gpu.values():
        assert 0 <= t["min_workers"] <= t["max_workers"]
    assert sum(t["max_workers"] for t in gpu.values()) <= cfg["max_workers"]
    assert cfg["docker"]["image"].endswith("/raydeep:0.1.0")
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(cmds)


def load_manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / "kuberay" / name).read_text())


def check_cluster_spec(spec: dict) -> None:
    import ray

    _, pins = project_pins()
    assert spec["rayVersion"] == pins["ray"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # KubeRay wants strings
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_kuberay_raycluster_manifest():
    m = load_manifest("raycluster.yaml")
    assert (m["apiVersion"], m["kind"]) == ("ray.io/v1", "RayCluster")
    assert m["metadata"]["name"]
    check_cluster_spec(m["spec"])


def test_kuberay_rayjob_manifest_runs_a_config_that_validates():
    from raydeep.config import load_config

    m = load_manifest("rayjob.yaml")
    assert (m["apiVersion"], m["kind"]) == ("ray.io/v1", "RayJob")
    spec = m["spec"]
    check_cluster_spec(spec["rayClusterSpec"])
    words = spec["entrypoint"].split()
    assert words[:2] in (["raydeep", "train"], ["raydeep", "tune"])
    # The config it names is in configs/ (the image copies it to /app/configs) and loads,
    # with the entrypoint's own overrides.
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    load_config(ROOT / words[2], overrides)
    yaml.safe_load(spec["runtimeEnvYAML"])


def test_dockerfile_pins_match_pyproject_and_constraints():
    text = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    reqs, pins = project_pins()
    for arg, pkg in (("RAY_VERSION", "ray"), ("DEEPSPEED_VERSION", "deepspeed"), ("TORCH_VERSION", "torch")):
        assert args[arg] == pins[pkg], f"{arg}={args[arg]} but constraints.txt pins {pkg}=={pins[pkg]}"
        assert reqs[pkg].specifier.contains(Version(args[arg])), f"{pkg} {args[arg]} breaks pyproject's {reqs[pkg]}"
    # The project's extras for ray are installed, pinned.
    assert f'"ray[{",".join(sorted(reqs["ray"].extras))}]==${{RAY_VERSION}}"' in text
    # A CUDA image with a CUDA torch: never the CPU wheel that constraints.txt means for laptops.
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-cudnn-devel", text, re.M)
    assert "/whl/cu" in args["TORCH_INDEX"] and "+cpu" not in text and "/whl/cpu" not in text
    # DeepSpeed ops are compiled at build time.
    assert re.search(r"DS_BUILD_FUSED_ADAM=1 .*pip install --no-build-isolation \"deepspeed==\$\{DEEPSPEED_VERSION\}\"",
                     text, re.S)
    assert "-c constraints.txt" in text


@pytest.mark.parametrize("path", ["aws.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_manifests_use_the_projects_image(path):
    text = (CLUSTER / path).read_text()
    images = set(re.findall(r"image: (\S+)", text))
    assert images == {"123456789012.dkr.ecr.us-west-2.amazonaws.com/raydeep:0.1.0"}
