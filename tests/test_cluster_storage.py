"""Shared storage on clusters: every KubeRay pod that runs trials mounts the shared volume its
run directory and offline W&B runs are written to; the driver gets WANDB_PROJECT; the Slurm
script is valid bash whose `medbench` commands exist. Offline: nothing is launched."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def test_every_kuberay_pod_mounts_the_shared_volume_that_holds_the_run() -> None:
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())["spec"]
    entry = shlex.split(job["entrypoint"])
    out = entry[entry.index("--out") + 1]
    cluster = job["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["volumes"] if "persistentVolumeClaim" in v}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        shared = [path for path, name in mounts.items()
                  if claims.get(name) == "medbench-shared" and out.startswith(path + "/")]
        assert shared, f"{container['name']}: --out {out} is not on the shared volume"
    head = {e["name"]: e for e in pods[0]["containers"][0]["env"]}
    assert head["WANDB_PROJECT"]["value"]
    assert "ReadWriteMany" in (CLUSTER / "README.md").read_text()


def test_slurm_script_is_valid_and_names_real_commands() -> None:
    import typer

    from bench.cli import app

    script = CLUSTER / "slurm.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --gpus-per-node" in text and "ray start --head" in text
    commands = {name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
                for name, cmd in typer.main.get_command(app).commands.items()}
    text = text.replace("\\\n", " ")
    found = re.findall(r"^medbench (\w+)(.*)$", text, flags=re.M)
    assert found
    for sub, rest in found:
        assert sub in commands
        assert set(re.findall(r"(--[a-z][a-z0-9-]*)", rest)) <= commands[sub]
