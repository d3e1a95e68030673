"""cluster/: the deployment files parse, validate against Ray's own schema, and only name
`medbench` subcommands and options that exist. Offline and fast: nothing is launched."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = ("aws.yaml", "gcp.yaml")
PASSED_ENV = ("WANDB_API_KEY", "WANDB_MODE", "MEDMNIST_DATA")


def load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def cluster_texts() -> dict[str, str]:
    """Every YAML in cluster/ and its README: the places a newcomer copies commands from."""
    files = sorted(CLUSTER.glob("*.yaml")) + [CLUSTER / "README.md"]
    return {p.name: p.read_text() for p in files}


# --- parsing and schema ------------------------------------------------------------------------


def test_expected_files_exist() -> None:
    for name in (*LAUNCHERS, "rayjob.yaml", "runtime_env.yaml", "README.md"):
        assert (CLUSTER / name).is_file(), name


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text()), dict)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_validates_against_ray_schema(name: str) -> None:
    """What `ray up` does first: merge the provider defaults, then validate (jsonschema)."""
    util = pytest.importorskip("ray.autoscaler._private.util", reason="ray not installed")
    pytest.importorskip("jsonschema", reason="Ray's config validation needs jsonschema")
    config = util.prepare_config(copy.deepcopy(load(name)))
    util.validate_config(config)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials belong on the GPU workers"
    workers = [t for k, t in types.items() if k != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers)


def test_launcher_schema_rejects_a_typo() -> None:
    """Guard the guard: the validation above really checks field names."""
    util = pytest.importorskip("ray.autoscaler._private.util", reason="ray not installed")
    pytest.importorskip("jsonschema")
    import jsonschema

    config = load("aws.yaml")
    config["available_node_types"]["head"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        util.validate_config(util.prepare_config(config))


def test_launchers_have_gpu_workers() -> None:
    aws = load("aws.yaml")["available_node_types"]
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in aws.values())
    gcp = load("gcp.yaml")["available_node_types"]
    assert any(t["node_config"].get("guestAccelerators") for t in gcp.values())


# --- installation ------------------------------------------------------------------------------


def _pinned_medmnist() -> str:
    """The medmnist pin of scripts/install.sh, the project's one install recipe."""
    match = re.search(r"medmnist==([\w.]+)", (REPO / "scripts" / "install.sh").read_text())
    assert match, "scripts/install.sh no longer pins medmnist"
    return match.group(1)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_installs_project_then_medmnist_without_deps(name: str) -> None:
    """medmnist with its deps pulls torchvision, which swaps the torch build."""
    cmds = load(name)["setup_commands"]
    torch = next(i for i, c in enumerate(cmds) if re.search(r"pip install .*\btorch\b", c))
    project = next(i for i, c in enumerate(cmds) if "pip install" in c and " -e " in c)
    medmnist = next(i for i, c in enumerate(cmds) if "medmnist==" in c)
    assert torch < project < medmnist
    assert "--no-deps" in cmds[medmnist]
    assert f"medmnist=={_pinned_medmnist()}" in cmds[medmnist]
    mounts = load(name)["file_mounts"]
    assert mounts.get("/home/ray/medbench") == ".", "the checkout is what `pip install -e` installs"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_never_holds_a_secret(name: str) -> None:
    text = (CLUSTER / name).read_text()
    literal_key = r"WANDB_API_KEY\s*[=:]\s*[\"']?[A-Za-z0-9_-]{20,}"
    assert not re.search(literal_key, text), "keys come from secrets.env"
    starts = " ".join(
        load(name)["head_start_ray_commands"] + load(name)["worker_start_ray_commands"]
    )
    assert "secrets.env" in starts and "RAY_AUTH_MODE=token" in starts


# --- runtime env -------------------------------------------------------------------------------


def test_runtime_env_excludes_heavy_paths_and_passes_env() -> None:
    env = load("runtime_env.yaml")
    assert env["working_dir"] == "."
    excludes = {e.rstrip("/") for e in env["excludes"]}
    assert {".git", ".venv", "runs", "wandb", "*.npz"} <= excludes
    # Passed through as ${NAME}: Ray expands them on each node; never a literal value here.
    assert env["env_vars"] == {name: f"${{{name}}}" for name in PASSED_ENV}


def test_runtime_env_is_accepted_by_ray() -> None:
    runtime_env = pytest.importorskip("ray.runtime_env", reason="ray not installed")
    env = load("runtime_env.yaml")
    parsed = runtime_env.RuntimeEnv(**env)
    assert parsed.env_vars() == env["env_vars"]


# --- KubeRay -----------------------------------------------------------------------------------


def test_rayjob_manifest() -> None:
    job = load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    entry = shlex.split(spec["entrypoint"])
    assert entry[:2] == ["medbench", "run"]
    assert entry[entry.index("--address") + 1] == "auto"
    assert entry[entry.index("--storage") + 1].startswith(("s3://", "gs://"))
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["submitterConfig"]["backoffLimit"], int)

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    assert {".git", ".venv", "runs"} <= {e.rstrip("/") for e in runtime_env["excludes"]}
    # KubeRay puts the runtime env in a double-quoted shell argument in the submitter pod: a
    # ${VAR} would be expanded there (to "") and override the pods' real values.
    assert "$" not in spec["runtimeEnvYAML"]

    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (gpu_group,) = cluster["workerGroupSpecs"]
    (worker,) = gpu_group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu_group["minReplicas"] == 0 < gpu_group["maxReplicas"]
    for container in [*head["template"]["spec"]["containers"], worker]:
        key = {e["name"]: e for e in container["env"]}["WANDB_API_KEY"]
        assert "value" not in key and key["valueFrom"]["secretKeyRef"]["optional"] is True


# --- commands quoted in the docs and manifests -------------------------------------------------

# `medbench <word>` where medbench is a command, not part of a path or a name (medbench-full,
# /home/ray/medbench, image medbench:latest); spaces only, so YAML keys on the next line don't
# count. A command may continue over `\` line ends and `>-` folded YAML lines.
COMMAND = re.compile(r"(?<![\w/.@-])medbench[ \t]+([a-z][a-z0-9_-]*)((?:\\\n|[^\n`])*)")


def _cli_commands() -> dict[str, set[str]]:
    """Subcommand -> its option names, from the real Typer app (skip if it can't import)."""
    typer = pytest.importorskip("typer", reason="typer not installed")
    try:
        from bench.cli import app
    except ImportError as err:  # the CLI is optional for this test file, not for the project
        pytest.skip(f"bench.cli does not import yet ({err}); cannot check subcommand names")
    group = typer.main.get_command(app)
    return {
        name: {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        for name, cmd in group.commands.items()
    }


def _quoted_commands() -> list[tuple[str, str, str]]:
    """(file, subcommand, rest of the command line) for every `medbench X` in cluster/."""
    found = []
    for fname, text in cluster_texts().items():
        if fname.endswith(".yaml"):  # fold YAML scalars so `>-` continuation lines join
            text = re.sub(r"\n[ \t]+(?=--)", " ", text)
        for match in COMMAND.finditer(text):
            found.append((fname, match.group(1), match.group(2)))
    return found


def test_docs_mention_medbench_commands() -> None:
    subs = {sub for _, sub, _ in _quoted_commands()}
    assert "run" in subs


def test_every_quoted_subcommand_and_option_exists() -> None:
    commands = _cli_commands()
    problems = []
    for fname, sub, rest in _quoted_commands():
        if sub not in commands:
            problems.append(f"{fname}: `medbench {sub}` is not a subcommand of {sorted(commands)}")
            continue
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
            if opt not in commands[sub]:
                problems.append(f"{fname}: `medbench {sub}` has no option {opt}")
    assert not problems, "\n".join(problems)


def test_code_sha256_names_the_code_without_git(tmp_path: Path) -> None:
    """meta.json's code fingerprint: what `ray job submit` runs has no .git to ask."""
    from bench.experiment import code_sha256

    (tmp_path / "bench" / "models").mkdir(parents=True)
    (tmp_path / "bench" / "search_spaces").mkdir()
    (tmp_path / "bench" / "models" / "cnn.py").write_text("WIDTH = 32\n")
    (tmp_path / "bench" / "search_spaces" / "common.yaml").write_text("parameters: {}\n")
    (tmp_path / "README.md").write_text("docs\n")
    first = code_sha256(tmp_path)
    assert code_sha256(tmp_path) == first and len(first) == 64
    (tmp_path / "README.md").write_text("other docs\n")
    assert code_sha256(tmp_path) == first  # only code and search spaces count
    (tmp_path / "bench" / "models" / "cnn.py").write_text("WIDTH = 64\n")
    changed = code_sha256(tmp_path)
    assert changed != first
    (tmp_path / "bench" / "search_spaces" / "mlp.yaml").write_text("parameters: {}\n")
    assert code_sha256(tmp_path) != changed
