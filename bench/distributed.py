"""Ray Train data-parallel trials: a family marked in the spec's `distributed` runs each trial
as a `TorchTrainer` with N workers (DDP: gloo on CPU, nccl on GPU) inside its Tune trial.

Ray 2.60 (Train V2): a TorchTrainer cannot be passed to a Tuner, so the Tune function trial
calls `TorchTrainer(...).fit()` itself and forwards each worker report to Tune through
`TuneReportCallback`. The trial itself holds (almost) no resources; the workers hold them.
"""

from __future__ import annotations

from typing import Any

# What the Tune trial that only drives the trainer asks for (Ray refuses plain {"cpu": 0}).
DRIVER_RESOURCES = {"cpu": 0, "memory": 64 * 1024 * 1024}


def _worker_loop(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the ordinary trainer on this worker's shard."""
    import ray.train
    import ray.train.torch

    from bench.search import _trial_data
    from bench.train import TrainConfig, fit

    ctx = ray.train.get_context()
    conf = TrainConfig.from_dict(cfg["job"])
    data = _trial_data(conf.dataset, conf.size, cfg["data_ref"])
    data = data.to(ray.train.torch.get_device())

    def report(record: dict) -> None:
        ray.train.report(dict(record))  # every worker reports; Tune sees rank 0's metrics

    fit(conf, data, on_epoch=report, rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(), wrap_model=ray.train.torch.prepare_model)


def fit_distributed(job: dict[str, Any], data_ref: dict, workers: int, use_gpu: bool,
                    storage: str, name: str) -> None:
    """One search trial as a DDP job of `workers` processes, reporting per epoch to Tune."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cpu_per_worker = max(1.0, float(job.get("threads") or 1))
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"job": job, "data_ref": data_ref},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpu_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage,
                             callbacks=[TuneReportCallback()]),
    )
    trainer.fit()
