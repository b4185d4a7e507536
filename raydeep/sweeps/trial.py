"""One Tune trial: its validated config, and the training it runs inside Tune's trial actor.

Each trial is the multi-worker DeepSpeed ``TorchTrainer`` of ``driver.build_trainer``. Ray
2.60's ``Tuner`` refuses a Train V2 trainer, so each trial is a small Tune *function* that
applies its parameters to the base config, plans the run against data opened once on the
driver, and fits:

* ``asha`` and ``none``: one fit per trial; ``TuneReportCallback`` turns every epoch's
  ``ray.train.report`` into one Tune iteration, so ASHA can stop a trial after any epoch. The
  Train run is named after the trial, so a trial restarted by ``--resume`` continues from its
  own latest checkpoint.
* ``pbt``: one short fit per Tune iteration ("segment", ``perturbation_interval`` epochs). A
  segment's Train run folder (its checkpoints and snapshot) is handed to Tune as the trial's
  checkpoint; the next segment, of this trial or of a trial that clones it, copies that folder
  to a new Train run name, which Train V2 resumes: same global step, same optimizer state.

Trials touch the sweep's storage only through a pyarrow filesystem (``TrialStorage``), so a
sweep on ``s3://`` runs the same code as a local one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.data
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from raydeep.cluster.connect import ClusterInfo
from raydeep.config import Config, validate
from raydeep.errors import ConfigError
from raydeep.sweeps.space import Distribution, SchedulerConfig, apply_params
from raydeep.trainers.launch import build_trainer
from raydeep.trainers.plan import DataPlan, RunPlan, plan_run
from raydeep.trainers.reporting import finished

SEGMENT_FILE = "segment.json"


# ---------------------------------------------------------------------------------------------
# A trial's config


def validate_raw(raw: dict) -> tuple[Config | None, str | None]:
    """``raw`` validated, or the one-line reason it is not (without the ``-:`` source)."""
    try:
        return validate(raw, "-"), None
    except ConfigError as exc:
        return None, str(exc).removeprefix("-: ")


def trial_config(base: dict, space: dict[str, Distribution], params: dict[str, Any]
                 ) -> tuple[Config, dict[str, str]]:
    """The validated config of one trial, and the parameters it ignored (with reasons)."""
    clamped = {k: (space[k].clamp(v) if k in space else v) for k, v in params.items()}
    raw, ignored = apply_params(base, clamped)
    cfg, err = validate_raw(raw)
    if cfg is None:
        shown = ", ".join(f"{k}={v!r}" for k, v in clamped.items() if k not in ignored)
        raise ConfigError(f"trial with {shown}: {err}")
    return cfg, ignored


def trial_params(config: dict) -> dict[str, Any]:
    """The searched parameters in a Tune trial's config."""
    return dict(config.get("params") or {})


# ---------------------------------------------------------------------------------------------
# Where the trials' Train runs go


@dataclass
class TrialStorage:
    """Where the trials' Train runs live: ``root`` is a path in ``fs``, a pyarrow filesystem
    (``None``: this machine's, for a local sweep). Every file operation a trial makes on it
    goes through ``fs``, so a sweep on ``s3://`` runs the same code as a local one."""

    root: str
    fs: pafs.FileSystem | None = None

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.fs if self.fs is not None else pafs.LocalFileSystem()

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def segment_folders(self, trial_id: str) -> list[str]:
        """This trial's segment folders (``<trial>-e<epochs>``), left by a pause or restart."""
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.path for i in infos
                      if i.type == pafs.FileType.Directory and i.base_name.startswith(f"{trial_id}-e"))

    def remove(self, path: str) -> None:
        self.filesystem.delete_dir(path)

    def copy_in(self, source: str, source_fs: pafs.FileSystem, dest: str) -> None:
        """Copy the folder ``source`` (on ``source_fs``: Tune's checkpoint) to ``dest`` here."""
        self.filesystem.create_dir(dest)
        pafs.copy_files(source, dest, source_filesystem=source_fs, destination_filesystem=self.filesystem,
                        chunk_size=64 * 1024 * 1024)

    def move(self, source: str, dest: str) -> None:
        """A rename on a local filesystem; on S3 (no renames) a copy of every object, then the
        delete (fsspec's recursive ``mv`` trips over the folder's own marker object)."""
        if self.fs is None:
            self.filesystem.move(source, dest)
            return
        pafs.copy_files(source, dest, source_filesystem=self.fs, destination_filesystem=self.fs,
                        chunk_size=64 * 1024 * 1024)
        self.fs.delete_dir(source)

    def write_json(self, path: str, obj: Any) -> None:
        with self.filesystem.open_output_stream(path) as f:
            f.write(json.dumps(obj).encode())


# ---------------------------------------------------------------------------------------------
# The trial (runs in a Tune trial actor)


@dataclass
class TrialContext:
    """What every trial needs, planned once on the driver and shipped with tune.with_parameters."""

    base: dict
    space: dict[str, Distribution]
    scheduler: SchedulerConfig
    metric: str
    info: ClusterInfo  # with the trial's token CPU taken out
    data: DataPlan  # the data opened and counted once
    trials: TrialStorage  # where the trials' Train runs go (local or S3)


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune function trainable: one trial, the same TorchTrainer ``raydeep train`` fits."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    trial_id = tune.get_context().get_trial_id()
    params = trial_params(config)
    cfg, _ = trial_config(ctx.base, ctx.space, params)
    plan = plan_run(cfg, ctx.info, ctx.data)
    if ctx.scheduler.name == "pbt":
        run_segments(plan, ctx, trial_id)
    else:
        # Named after the trial: a trial restarted by --resume continues its own Train run.
        # A loss gone NaN or inf raises: the trial shows as an error with the line naming the step.
        finished(build_trainer(plan, name=trial_id, storage_path=ctx.trials.root, storage_filesystem=ctx.trials.fs,
                               callbacks=[TuneReportCallback()]).fit())


def read_segment(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    """``segment.json`` of a Tune checkpoint, on whatever filesystem Tune keeps it."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path.rstrip('/')}/{SEGMENT_FILE}") as f:
        return json.loads(f.read())


def run_segments(plan: RunPlan, ctx: TrialContext, trial_id: str) -> None:
    """PBT: one short fit per Tune iteration, each continuing the Train run it was handed.

    A segment's Train run folder, plus ``segment.json`` (whose trial, how far), is the Tune
    checkpoint. The trial's next segment renames the folder to its own run name and Train
    resumes it; a trial restarted or cloned from a checkpoint copies Tune's copy first.
    """
    store = ctx.trials
    for stale in store.segment_folders(trial_id):  # this trial's folders from before a pause or restart
        store.remove(stale)
    total = plan.cfg.run.epochs
    done, carry, cloned_from = 0, None, None  # carry: the Train run folder the next segment continues
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        meta = read_segment(checkpoint)
        done = int(meta["epochs_done"])
        carry = store.path(f"{trial_id}-e{done:03d}")
        store.copy_in(checkpoint.path, checkpoint.filesystem, carry)
        if meta["trial_id"] != trial_id:
            cloned_from = meta["trial_id"]
    while done < total:
        end = min(done + ctx.scheduler.perturbation_interval, total)
        run_dir = store.path(f"{trial_id}-e{end:03d}")
        if carry is not None:
            store.move(carry, run_dir)  # Train V2 resumes a run whose folder holds a snapshot
        seg_cfg = plan.cfg.model_copy(update={"run": plan.cfg.run.model_copy(update={"epochs": end})})
        seg_plan = replace(plan, cfg=seg_cfg)  # total_steps stays the whole run's: one LR schedule
        final = finished(build_trainer(seg_plan, name=run_dir.rsplit("/", 1)[1], storage_path=store.root,
                                       storage_filesystem=store.fs).fit())
        store.write_json(f"{run_dir}/{SEGMENT_FILE}",
                         {"trial_id": trial_id, "epochs_done": end, "global_step": final.get("global_step")})
        metrics = {k: v for k, v in final.items() if k != "val/confusion"}
        # from_epochs and cloned_from: the driver's trials.jsonl logs a clone from them.
        metrics.update(epochs_done=end, from_epochs=done, cloned_from=cloned_from or "")
        last = end == total or bool(final.get("stopped_early"))
        # Tune copies the folder into its own storage: what a clone reads never changes under it.
        # (Tune stops a trial that reports its last segment.)
        tune.report(metrics, checkpoint=tune.Checkpoint(run_dir, filesystem=store.filesystem))
        carry, done, cloned_from = run_dir, end, None
        if last:
            break
