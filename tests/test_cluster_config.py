"""Checks for cluster.yaml, offline: nothing here contacts AWS or any other host.

Two layers:
1. Ray's own checks: the JSON schema Ray ships (ray/autoscaler/ray-schema.json) and
   validate_config(prepare_config(cfg)), which is what `ray up` runs before touching AWS.
2. The project's checks, for what Ray does not look at: per-node fields (an `InstanceType: 5`
   passes Ray), GPU counts, image version, inbound rules, auth/usage-stats env, dashboard bind.
   They run on the *prepared* config, i.e. after Ray has filled in its AWS defaults, because
   that is what `ray up` uses: a deleted head_start_ray_commands silently comes back from Ray's
   defaults with `--dashboard-host=0.0.0.0` and no RAY_AUTH_MODE.
Each check returns a list of problems (empty = fine); the negative tests mutate the loaded
config and show that the project's check catches what Ray accepts.
"""

import os

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import copy
import ipaddress
import json
import re
import shlex
import socket
import sys
import tomllib
from functools import partial
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

CPU_FAMILIES = {"m5", "m6i", "c5"}
GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5"}
CPU_SIZE = re.compile(r"^(large|\d*xlarge|metal)$")
# GPUs per instance type (AWS instance specs). Add a row before using a new size.
GPU_COUNT = {
    **{f"g4dn.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    "g4dn.12xlarge": 4,
    "g4dn.metal": 8,
    **{f"{f}.{s}": 1 for f in ("g5", "g6", "g6e") for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")},
    **{f"{f}.{s}": n for f in ("g5", "g6", "g6e") for s, n in (("12xlarge", 4), ("24xlarge", 4), ("48xlarge", 8))},
    "p3.2xlarge": 1,
    "p3.8xlarge": 4,
    "p3.16xlarge": 8,
    "p4d.24xlarge": 8,
    "p5.4xlarge": 1,
    "p5.48xlarge": 8,
}
# Image tags: rayproject/ray:<ray>-py<XY>-<gpu|cuNNN|cpu>, optionally rayproject/ray-ml.
IMAGE_TAG = re.compile(r"^rayproject/ray(?:-ml)?:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d{2,3})-(?P<acc>gpu|cu\d+|cpu)$")
REQUIRED_ENV = ("RAY_AUTH_MODE=token", "RAY_USAGE_STATS_ENABLED=0")
NARROWEST_ALLOWED_SSH_V4, NARROWEST_ALLOWED_SSH_V6 = 16, 48  # broader is not "your own range"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


# ---------------------------------------------------------------- helpers
def _node_types(cfg):
    return cfg.get("available_node_types", {})


def _workers(cfg):
    return {k: v for k, v in _node_types(cfg).items() if k != cfg.get("head_node_type")}


def _family(instance_type):
    return instance_type.split(".", 1)[0] if isinstance(instance_type, str) else None


def _commands(cfg, key):
    return [c for c in cfg.get(key) or [] if isinstance(c, str)]


# ---------------------------------------------------------------- project checks
def check_instance_types(cfg):
    problems = []
    for name, nt in _node_types(cfg).items():
        it = nt.get("node_config", {}).get("InstanceType")
        if not isinstance(it, str):
            problems.append(f"{name}: InstanceType must be a string like 'g5.xlarge', got {it!r}")
            continue
        fam, _, size = it.partition(".")
        if fam in CPU_FAMILIES:
            if not CPU_SIZE.match(size):
                problems.append(f"{name}: {it!r} is not a valid {fam} size")
        elif fam in GPU_FAMILIES:
            if it not in GPU_COUNT:
                problems.append(f"{name}: {it!r} is not in the GPU_COUNT table of this test")
        else:
            problems.append(
                f"{name}: instance family {fam!r} of {it!r} is not in the known families "
                f"CPU {sorted(CPU_FAMILIES)} / GPU {sorted(GPU_FAMILIES)}"
            )
    return problems


def check_head_is_cpu(cfg):
    head = cfg.get("head_node_type")
    it = _node_types(cfg).get(head, {}).get("node_config", {}).get("InstanceType")
    if _family(it) not in CPU_FAMILIES:
        return [f"head node type {head!r} should be a CPU instance ({sorted(CPU_FAMILIES)}), got {it!r}"]
    return []


def check_gpu_resources(cfg):
    problems = []
    for name, nt in _node_types(cfg).items():
        it = nt.get("node_config", {}).get("InstanceType")
        declared = (nt.get("resources") or {}).get("GPU")
        if _family(it) in GPU_FAMILIES:
            want = GPU_COUNT.get(it)
            if declared is None:
                problems.append(f"{name}: GPU node type must declare resources {{'GPU': {want}}}")
            elif want is not None and declared != want:
                problems.append(f"{name}: declares GPU={declared} but {it} has {want} GPU(s)")
        elif declared:
            problems.append(f"{name}: declares GPU={declared} on non-GPU instance {it!r}")
    return problems


def check_worker_counts(cfg):
    problems = []
    for name, nt in _workers(cfg).items():
        lo, hi = nt.get("min_workers", 0), nt.get("max_workers")
        if hi is not None and lo > hi:
            problems.append(f"{name}: min_workers={lo} is larger than max_workers={hi}")
    if not any(
        _family(nt.get("node_config", {}).get("InstanceType")) in GPU_FAMILIES and nt.get("max_workers", 0) > 0
        for nt in _workers(cfg).values()
    ):
        problems.append("no GPU worker type can scale above 0 workers")
    return problems


def check_docker_image(cfg):
    docker = cfg.get("docker") or {}
    if not docker.get("image") and not docker.get("worker_image"):
        return ["docker.image is missing: nodes would run on the bare AMI's Python"]
    want_py = f"{sys.version_info.major}{sys.version_info.minor}"
    images = {
        "head": docker.get("head_image", docker.get("image")),
        "workers": docker.get("worker_image", docker.get("image")),
    }
    for name, nt in _workers(cfg).items():
        if (nt.get("docker") or {}).get("worker_image"):
            images[name] = nt["docker"]["worker_image"]
    problems = []
    for who, image in images.items():
        m = IMAGE_TAG.match(image or "")
        if not m:
            problems.append(f"{who}: image {image!r} is not rayproject/ray:<ver>-py<XY>-<gpu|cuNNN>")
            continue
        if m["ray"] != ray.__version__:
            problems.append(f"{who}: image {image!r} has Ray {m['ray']}, installed Ray is {ray.__version__}")
        if m["py"] != want_py:
            problems.append(f"{who}: image {image!r} has Python py{m['py']}, this project runs py{want_py}")
        if who != "head" and m["acc"] == "cpu":
            problems.append(f"{who}: image {image!r} is the CPU variant; GPU workers need -gpu or -cuNNN")
    return problems


def _cidrs(rule):
    return [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]


def check_security_group(cfg):
    """Our own IpPermissions: SSH (22/tcp) only, from a bounded address range."""
    rules = (cfg.get("provider", {}).get("security_group") or {}).get("IpPermissions", [])
    problems = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            problems.append(f"IpPermissions[{i}] is not a mapping: {rule!r}")
            continue
        ports = (rule.get("FromPort"), rule.get("ToPort"))
        if str(rule.get("IpProtocol")) not in ("tcp", "6") or ports != (22, 22):
            problems.append(
                f"IpPermissions[{i}] opens {rule.get('IpProtocol')} ports {ports[0]}-{ports[1]}: "
                "only SSH (tcp 22) may be open; reach the dashboard with `ray dashboard`"
            )
        for key in ("UserIdGroupPairs", "PrefixListIds"):
            if rule.get(key):
                problems.append(f"IpPermissions[{i}] uses {key}; allow SSH by CIDR only")
        for cidr in _cidrs(rule):
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except (TypeError, ValueError):
                problems.append(f"IpPermissions[{i}]: {cidr!r} is not a CIDR")
                continue
            narrowest = NARROWEST_ALLOWED_SSH_V4 if net.version == 4 else NARROWEST_ALLOWED_SSH_V6
            if net.prefixlen < narrowest:
                problems.append(
                    f"IpPermissions[{i}]: {cidr} opens ports {ports[0]}-{ports[1]} to "
                    f"{'the whole internet' if net.prefixlen == 0 else 'a very wide range'}; "
                    f"use your own network (at least /{narrowest})"
                )
    return problems


def check_effective_inbound_rules(cfg, yaml_text):
    """What Ray will actually authorize on a security group it creates (pure function, no AWS):
    our rules + all traffic inside the group + Ray's own SSH-from-anywhere rule. Nothing but 22
    may face outside the group, and the world-open SSH Ray adds must be stated in a comment."""
    if all("SecurityGroupIds" in nt.get("node_config", {}) for nt in _node_types(cfg).values()):
        return []  # groups managed outside Ray: Ray adds no rules
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    ours = (cfg.get("provider", {}).get("security_group") or {}).get("IpPermissions", [])
    effective = _create_default_inbound_rules({"sg-self"}, [r for r in ours if isinstance(r, dict)])
    comments = " ".join(line.split("#", 1)[1] for line in yaml_text.splitlines() if "#" in line)
    problems = []
    for rule in effective:
        if rule.get("UserIdGroupPairs") and not _cidrs(rule):
            continue  # intra-cluster traffic
        ports = (rule.get("FromPort"), rule.get("ToPort"))
        if ports != (22, 22):
            problems.append(f"effective inbound rule opens ports {ports} from outside the cluster")
        world = [c for c in _cidrs(rule) if c in ("0.0.0.0/0", "::/0")]
        if world and ports == (22, 22) and not all(c in comments for c in world):
            problems.append(f"Ray will open SSH to {world}, but no comment in cluster.yaml says so")
    return problems


def check_start_commands_env(cfg):
    problems = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in _commands(cfg, key) if "ray start" in c]
        if not starts:
            problems.append(f"{key}: has no `ray start` command")
        for cmd in starts:
            before = cmd[: cmd.index("ray start")]
            for env in REQUIRED_ENV:
                if not re.search(rf"(^|[\s;]){re.escape(env)}(\s|;|$)", before):
                    problems.append(f"{key}: `{env}` is not set before `ray start` in {cmd!r}")
    return problems


def check_docker_env(cfg):
    docker = cfg.get("docker") or {}
    tokens = shlex.split(" ".join(str(o) for o in docker.get("run_options") or []))
    envs = set()
    for i, tok in enumerate(tokens):
        if tok in ("--env", "-e") and i + 1 < len(tokens):
            envs.add(tokens[i + 1])
        elif tok.startswith("--env="):
            envs.add(tok[len("--env=") :])
    return [
        f"docker.run_options lacks `--env {env}` (the container's own environment)"
        for env in REQUIRED_ENV
        if env not in envs
    ]


def check_dashboard_localhost(cfg):
    problems = []
    head_starts = [c for c in _commands(cfg, "head_start_ray_commands") if "ray start" in c]
    hosts = [h for c in head_starts for h in re.findall(r"--dashboard-host[=\s]+(\S+)", c)]
    if not hosts:
        problems.append("head `ray start` has no --dashboard-host=127.0.0.1")
    problems += [
        f"dashboard binds {h}: use --dashboard-host=127.0.0.1 and `ray dashboard`"
        for h in hosts
        if h.strip("'\"") not in LOCAL_HOSTS
    ]
    return problems


def check_auth_token_mounted(cfg):
    mounts = cfg.get("file_mounts") or {}
    if "~/.ray/auth_token" not in mounts:
        msg = (
            "file_mounts has no '~/.ray/auth_token': with RAY_AUTH_MODE=token the nodes "
            "would have no shared token and workers could not join the head"
        )
        return [msg]
    return []


def check_project_install(cfg):
    """Every top-level package and file that `pip install -e` needs is mounted, and nothing bigger."""
    problems = []
    mounts = cfg.get("file_mounts") or {}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
    for part in sorted(packages) + ["pyproject.toml", pyproject["project"]["readme"]]:
        if mounts.get(f"~/vlsm-tune/{part}") != f"./{part}":
            problems.append(f"file_mounts lacks '~/vlsm-tune/{part}': './{part}' (pip install -e needs it)")
    if "." in mounts.values():
        problems.append("file_mounts mounts '.': ray up would hash every file under it, .venv included")
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in
        if not any(re.search(r"pip install (.* )?-e ~/vlsm-tune\b", c) for c in _commands(cfg, key)):
            problems.append(f"{key}: no `pip install -e ~/vlsm-tune`")
    return problems


def check_worker_iam(cfg):
    """Ray gives only the head an instance profile; workers read data and write checkpoints on S3."""
    problems = []
    for name, nt in _workers(cfg).items():
        prof = nt.get("node_config", {}).get("IamInstanceProfile") or {}
        arn, pname = prof.get("Arn"), prof.get("Name")
        if not (isinstance(pname, str) and pname) and not (
            isinstance(arn, str) and re.match(r"^arn:aws[\w-]*:iam::\d{12}:instance-profile/\S+$", arn)
        ):
            problems.append(
                f"{name}: node_config.IamInstanceProfile needs an instance-profile "
                f"Arn or Name for S3 access, got {prof!r}"
            )
    return problems


# ---------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"test tried to open a network connection: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def yaml_text():
    return CLUSTER_YAML.read_text()


@pytest.fixture
def raw(yaml_text):
    return yaml.safe_load(yaml_text)


def prepared(cfg):
    return prepare_config(copy.deepcopy(cfg))


PROJECT_CHECKS = [
    check_instance_types,
    check_head_is_cpu,
    check_gpu_resources,
    check_worker_counts,
    check_docker_image,
    check_security_group,
    check_effective_inbound_rules,
    check_start_commands_env,
    check_docker_env,
    check_dashboard_localhost,
    check_auth_token_mounted,
    check_project_install,
    check_worker_iam,
]


def run_check(check, cfg, yaml_text):
    if check is check_effective_inbound_rules:
        check = partial(check, yaml_text=yaml_text)
    return check(cfg)


# ---------------------------------------------------------------- Ray's own checks
def test_ray_schema(raw):
    schema = json.loads(RAY_SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(raw), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_ray_validate_config(raw):
    validate_config(prepared(raw))


# ---------------------------------------------------------------- project checks
@pytest.mark.parametrize("check", PROJECT_CHECKS, ids=lambda c: c.__name__)
def test_project_check(check, raw, yaml_text):
    problems = run_check(check, prepared(raw), yaml_text)
    assert not problems, "cluster.yaml: " + "; ".join(problems)


def _open_dashboard_port(cfg):
    cfg["provider"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    )


def _first_gpu_type(cfg):
    return next(nt for nt in _workers(cfg).values() if "GPU" in nt.get("resources", {}))


NEGATIVE = [
    ("port 8265 open to the world", _open_dashboard_port, check_security_group, "only SSH"),
    ("port 8265 open, effective rules", _open_dashboard_port, check_effective_inbound_rules, "(8265, 8265)"),
    (
        "SSH from 0.0.0.0/0 in our rules",
        lambda c: c["provider"]["security_group"]["IpPermissions"][0].update(IpRanges=[{"CidrIp": "0.0.0.0/0"}]),
        check_security_group,
        "whole internet",
    ),
    (
        "InstanceType: 5",
        lambda c: _first_gpu_type(c)["node_config"].update(InstanceType=5),
        check_instance_types,
        "must be a string",
    ),
    (
        "unknown family",
        lambda c: _first_gpu_type(c)["node_config"].update(InstanceType="t2.micro"),
        check_instance_types,
        "not in the known families",
    ),
    ("GPU count off", lambda c: _first_gpu_type(c)["resources"].update(GPU=3), check_gpu_resources, "declares GPU=3"),
    (
        "old Ray image",
        lambda c: c["docker"].update(image="rayproject/ray:2.9.0-py311-gpu"),
        check_docker_image,
        "has Ray 2.9.0",
    ),
    (
        "head_start_ray_commands deleted (Ray's defaults: dashboard on 0.0.0.0)",
        lambda c: c.pop("head_start_ray_commands"),
        check_dashboard_localhost,
        "binds 0.0.0.0",
    ),
    (
        "head_start_ray_commands deleted (no auth env)",
        lambda c: c.pop("head_start_ray_commands"),
        check_start_commands_env,
        "RAY_AUTH_MODE=token",
    ),
    (
        "min_workers > max_workers",
        lambda c: _first_gpu_type(c).update(min_workers=3, max_workers=1),
        check_worker_counts,
        "larger than",
    ),
    (
        "a package left out of file_mounts",
        lambda c: c["file_mounts"].pop("~/vlsm-tune/prompts"),
        check_project_install,
        "'~/vlsm-tune/prompts'",
    ),
    (
        "the whole repo mounted",
        lambda c: c["file_mounts"].update({"~/vlsm-tune": "."}),
        check_project_install,
        "mounts '.'",
    ),
    (
        "worker without instance profile",
        lambda c: _first_gpu_type(c)["node_config"].pop("IamInstanceProfile"),
        check_worker_iam,
        "IamInstanceProfile",
    ),
]


@pytest.mark.parametrize("mutate,check,expect", [n[1:] for n in NEGATIVE], ids=[n[0] for n in NEGATIVE])
def test_project_check_catches_what_ray_accepts(mutate, check, expect, raw, yaml_text):
    bad = copy.deepcopy(raw)
    mutate(bad)
    validate_config(prepared(bad))  # Ray itself has no objection ...
    problems = run_check(check, prepared(bad), yaml_text)  # ... the project's check has
    assert any(expect in p for p in problems), f"{check.__name__} missed it: {problems}"


def test_ray_adds_world_ssh_unless_groups_are_given(raw, yaml_text):
    """Pins the Ray behaviour the cluster.yaml comment describes; if Ray changes, update both."""
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    rules = _create_default_inbound_rules({"sg-self"}, [])
    assert any(r.get("FromPort") == 22 and {"CidrIp": "0.0.0.0/0"} in r.get("IpRanges", []) for r in rules)
    no_comment = "\n".join(line.split("#", 1)[0] for line in yaml_text.splitlines())
    assert check_effective_inbound_rules(prepared(raw), no_comment), (
        "without the comment the world-open SSH rule should be reported"
    )
