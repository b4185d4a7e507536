"""The raydeep command line: parses arguments, loads the config, calls one function per command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from raydeep.errors import RaydeepError


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, e.g. --set model.layers=6 (repeatable)")


WAIT_DEFAULT_S = 1800.0  # --wait-for-resources alone: cloud GPU nodes take minutes to boot and pull images


def _add_wait_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait-for-resources", nargs="?", type=float, const=WAIT_DEFAULT_S, metavar="SECONDS",
                   help="when the cluster has fewer GPUs/CPUs than the run asks for, wait for an autoscaler to add "
                        f"them (countdown shown) instead of refusing; default {WAIT_DEFAULT_S:g} s. A cluster whose "
                        "autoscaler reports itself gets 900 s without the flag")


def _apply_wait_flag(args: argparse.Namespace) -> None:
    if getattr(args, "wait_for_resources", None) is not None:
        from raydeep.cluster.resources import WAIT_ENV

        os.environ[WAIT_ENV] = f"{args.wait_for_resources:g}"


def _add_tune_command(sub) -> None:
    p = sub.add_parser("tune", help="sweep a config's tune: section with Ray Tune (each trial a DeepSpeed run)",
                       description="Ray Tune sweep: every trial trains the config with its own parameters; "
                                   "prints a leaderboard and writes best.yaml, leaderboard.csv, sweep.png.")
    p.add_argument("config", nargs="?", help="config YAML with a tune: section (omit with --resume)")
    _add_overrides(p)
    p.add_argument("--run-dir", help="sweep directory (default: runs/<name>-sweep-<timestamp>)")
    p.add_argument("--resume", metavar="SWEEP_DIR",
                   help="continue an interrupted sweep; finished trials are not rerun")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    _add_wait_flag(p)


def _add_plan_command(sub) -> None:
    p = sub.add_parser("plan", help="what a config would take: workers, parameters, memory per ZeRO stage, what fits",
                       description="Plan a run without training: resources (and trials at once for a sweep), "
                                   "parameter count, bytes per worker under ZeRO 0-3 beside DeepSpeed's estimators, "
                                   "steps per epoch, and whether each stage fits. Exit 1 when none fits.")
    p.add_argument("config", help="run config YAML")
    _add_overrides(p)
    p.add_argument("--address", help="a Ray cluster to read resources from (default: RAY_ADDRESS, else this "
                                     "machine, without starting Ray)")
    p.add_argument("--memory-gib", type=float, metavar="GIB",
                   help="what if each worker had this much device memory (a GPU's, or on CPU workers its share "
                        "of the node's)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


ABOUT = "raydeep trains models on Ray with DeepSpeed, from one YAML config, on a laptop or a cluster."

EXAMPLES = """\
examples:
  raydeep train configs/digits-lt.yaml                                # the demo, on an embedded local Ray
  raydeep tune configs/sweep-digits-lt.yaml                           # the demo sweep (Ray Tune, ASHA)
  raydeep submit configs/digits-lt.yaml --address http://HEAD:8265    # the demo as a Ray Job on a cluster
"""


class _TopParser(argparse.ArgumentParser):
    """The top-level parser: its help opens with what raydeep is, then the usage."""

    def format_help(self) -> str:
        return f"{ABOUT}\n\n{super().format_help()}"


def version() -> str:
    """The installed package's version, else ``raydeep.__version__``, else ``unknown``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("raydeep")
    except PackageNotFoundError:
        import raydeep

        return getattr(raydeep, "__version__", "unknown")


def build_parser() -> argparse.ArgumentParser:
    parser = _TopParser(prog="raydeep", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"raydeep {version()}",
                        help="print raydeep's version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Ray's own logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=argparse.ArgumentParser)

    p = sub.add_parser("train", help="train one config on Ray (embedded local Ray unless --address)",
                       description="Train one config: Ray Data -> DeepSpeed workers -> metrics, checkpoints.")
    p.add_argument("config", nargs="?", help="run config YAML (omit with --resume)")
    _add_overrides(p)
    p.add_argument("--run-dir", help="output directory (default: runs/<name>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted or finished run from its latest checkpoint "
                        "(its config.yaml, plus any --set, e.g. --set run.epochs=10)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    _add_wait_flag(p)

    _add_tune_command(sub)
    _add_plan_command(sub)
    _add_cluster_commands(sub)
    _add_data_command(sub)

    p = sub.add_parser("config", help="show a config as raydeep reads it (base: files, --set, defaults)")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="print the resolved config: base: files merged, --set applied, defaults "
                                        "filled, validated")
    show.add_argument("config")
    _add_overrides(show)
    show.add_argument("--origin", action="store_true",
                      help="name after each value the file (or --set, or default) that set it")

    p = sub.add_parser("schedules", help="learning-rate schedules")
    ssub = p.add_subparsers(dest="schedules_command", required=True, metavar="ACTION")
    plot = ssub.add_parser("plot", help="draw the run's LR schedule over its real step count")
    plot.add_argument("config")
    _add_overrides(plot)
    plot.add_argument("--out", default="lr_schedule.png", help="PNG path (default: lr_schedule.png)")
    plot.add_argument("--compare", action="append", default=[], metavar="SCHEDULE",
                      help="another schedule to draw beside it: a name (cosine) or YAML "
                           "('{name: step, step_size: 2}'); repeatable")

    p = sub.add_parser("evaluate", help="metrics and confusion matrix of a checkpoint on a data set")
    p.add_argument("checkpoint", help="a run directory (uses its best checkpoint, also when run.storage put it "
                                      "on S3), a checkpoint directory, or s3://... of either (an S3 run folder: "
                                      "its latest checkpoint)")
    p.add_argument("--data", required=True, help="parquet split to evaluate on (same forms as data.val)")
    p.add_argument("--out", help="JSON output path or s3://... (default: evaluation.json in the run directory)")
    p.add_argument("--batch-size", type=int, default=256)
    _add_storage_flags(p)

    p = sub.add_parser("export", help="a hf checkpoint as a Hugging Face model directory (weights, labels, tokenizer)")
    p.add_argument("checkpoint", help="a run directory (its best checkpoint), a checkpoint directory, or s3://... "
                                      "of either, as for evaluate")
    p.add_argument("--out", required=True, help="the directory to write (from_pretrained reads it)")
    p.add_argument("--merge", action="store_true", help="LoRA: merge the adapters into the base weights and write a "
                                                        "standalone model (default: the adapters only)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    _add_storage_flags(p)

    p = sub.add_parser("generate", help="continue a prompt with a causal LM (a run, checkpoint or exported directory)")
    p.add_argument("model", help="a run directory, a checkpoint (local or s3://), or a directory raydeep export wrote")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=40, help="at most this many tokens (default 40)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, help="sample among the k likeliest tokens (needs --temperature > 0)")
    p.add_argument("--seed", type=int, help="makes sampling repeatable")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto", help="auto: cuda when available")
    _add_storage_flags(p)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from raydeep.config import load_config
    from raydeep.trainers.driver import check_run_dir, train

    _apply_wait_flag(args)
    if args.resume:
        if args.config:
            raise RaydeepError("train: give either CONFIG or --resume RUN_DIR, not both")
        run_dir = Path(args.resume)
        check_run_dir(run_dir, resume=True)  # "not a run directory" rather than a missing config file
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        train(cfg, run_dir=run_dir, address=args.address, resume=True, verbose=args.debug,
              source=str(run_dir / "config.yaml"))
        return 0
    if not args.config:
        raise RaydeepError("train: missing CONFIG (or --resume RUN_DIR)")
    cfg = load_config(args.config, args.overrides)
    train(cfg, run_dir=args.run_dir, address=args.address, verbose=args.debug, source=args.config)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from raydeep.config import load_config_with_origins, to_yaml, to_yaml_with_origins

    loaded = load_config_with_origins(args.config, args.overrides)
    sys.stdout.write(to_yaml_with_origins(loaded) if args.origin else to_yaml(loaded.config))
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    from raydeep.config import load_config
    from raydeep.trainers.schedule_plot import plot_schedule_command

    out = plot_schedule_command(load_config(args.config, args.overrides), args.out, args.compare)
    print(f"wrote {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raydeep.trainers.evaluate import evaluate_command

    given = args.endpoint_url or args.region or args.profile  # else: the run's storage section, else AWS's
    evaluate_command(args.checkpoint, args.data, out=args.out, batch_size=args.batch_size,
                     storage=_storage_from_args(args) if given else None)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from raydeep.trainers.export import export_command

    given = args.endpoint_url or args.region or args.profile
    export_command(args.checkpoint, args.out, merge=args.merge, overwrite=args.overwrite,
                   storage=_storage_from_args(args) if given else None)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from raydeep.trainers.generate import generate_command

    given = args.endpoint_url or args.region or args.profile
    generate_command(args.model, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, seed=args.seed, device=args.device,
                     storage=_storage_from_args(args) if given else None)
    return 0


COMMANDS = {"train": cmd_train, "config": cmd_config, "evaluate": cmd_evaluate, "schedules": cmd_schedules,
            "export": cmd_export, "generate": cmd_generate}


def cmd_tune(args: argparse.Namespace) -> int:
    from raydeep.config import load_config
    from raydeep.sweeps.runner import resume_sweep, run_sweep

    _apply_wait_flag(args)
    if args.resume:
        if args.config or args.overrides:
            raise RaydeepError("tune: --resume SWEEP_DIR continues a sweep with its own config; "
                               "give neither CONFIG nor --set")
        resume_sweep(args.resume, address=args.address, verbose=args.debug)
        return 0
    if not args.config:
        raise RaydeepError("tune: missing CONFIG (or --resume SWEEP_DIR)")
    cfg = load_config(args.config, args.overrides)
    run_sweep(cfg, source=args.config, run_dir=args.run_dir, address=args.address, verbose=args.debug)
    return 0


COMMANDS["tune"] = cmd_tune


def cmd_plan(args: argparse.Namespace) -> int:
    from raydeep.config import load_config
    from raydeep.sweeps.capacity import sweep_fit
    from raydeep.trainers.plan_command import plan_command

    cfg = load_config(args.config, args.overrides)
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    plan_command(cfg, address=address, memory_gib=args.memory_gib, as_json=args.json, verbose=args.debug,
                 sweep=sweep_fit)
    return 0


COMMANDS["plan"] = cmd_plan


def _add_storage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    p.add_argument("--region", help="S3 region (default: AWS_REGION / AWS_DEFAULT_REGION / the profile's)")
    p.add_argument("--profile", help="AWS profile (default: AWS_PROFILE); credentials only ever come from "
                                     "the standard AWS variables and files")


def _add_data_command(sub) -> None:
    p = sub.add_parser("data", help="prepare raw text as tokenized parquet splits; inspect a data set")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prep = dsub.add_parser(
        "prepare", help="jsonl/csv/parquet/text-dirs -> tokenized, sharded parquet splits with manifests",
        description="Parse, split (seeded), tokenize and shard raw text through Ray Data: labelled records padded "
                    "to --max-len (--task classification, stratified split), or documents packed into blocks of "
                    "--block-size tokens (--task lm, split by document). Writes "
                    "OUTPUT/{train,val,test}/part-*.parquet + _raydeep.json, OUTPUT/tokenizer.json.")
    prep.add_argument("--input", required=True, help="a file, directory, glob or s3://... (text-dirs: DIR/LABEL/*.txt; "
                                                     "with --task lm every *.txt under DIR)")
    prep.add_argument("--format", required=True, choices=["jsonl", "csv", "parquet", "text-dirs"])
    prep.add_argument("--output", required=True, help="a new directory or s3://BUCKET/PREFIX")
    prep.add_argument("--task", choices=["classification", "lm"], default="classification",
                      help="classification (labelled records, default) or lm (unlabelled documents packed into "
                           "blocks for a causal language model)")
    prep.add_argument("--text-field", default="text")
    prep.add_argument("--label-field", help="default: label (classification only)")
    prep.add_argument("--labels", help="label names in id order, comma-separated (default: the sorted values "
                                       "found); a record with any other label is a bad record")
    tok = prep.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", metavar="PATH", help="a Hugging Face tokenizer.json, or a model directory "
                                                         "(its tokenizer.json or slow-tokenizer files)")
    tok.add_argument("--train-tokenizer", choices=["bpe", "wordpiece"], help="train one on the training split")
    prep.add_argument("--vocab-size", type=int, default=8000)
    prep.add_argument("--max-len", type=int, help="classification: pad or truncate every sequence to this length "
                                                  "(default 128)")
    prep.add_argument("--block-size", type=int, help="lm (required): tokens per packed block")
    prep.add_argument("--val-fraction", type=float, default=0.1)
    prep.add_argument("--test-fraction", type=float, default=0.0)
    prep.add_argument("--shard-rows", type=int, default=100_000, help="rows per parquet shard")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--on-bad-record", choices=["error", "skip"], default="error",
                      help="stop at the first unusable record (default), or skip and count them")
    prep.add_argument("--no-shuffle", action="store_true", help="keep input order in the shards")
    prep.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    prep.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    _add_storage_flags(prep)
    ins = dsub.add_parser("inspect", help="schema, rows, shards, label histogram (or target statistics, or LM "
                                          "blocks and tokens) and samples",
                          description="Describe a split (or every split of a prepared set) without Ray.")
    ins.add_argument("path", help="a split directory, file, glob, s3://... or a prepared set's root")
    ins.add_argument("--samples", type=int, default=3, help="rows to decode and print (default 3)")
    _add_storage_flags(ins)


def _storage_from_args(args: argparse.Namespace):
    from raydeep.datasets.storage import StorageConfig

    try:
        return StorageConfig(endpoint_url=args.endpoint_url, region=args.region, profile=args.profile)
    except ValueError as exc:  # pydantic's ValidationError; only endpoint_url is checked
        msg = exc.errors()[0]["msg"].removeprefix("Value error, ") if hasattr(exc, "errors") else str(exc)
        raise RaydeepError(f"--endpoint-url {args.endpoint_url}: {msg}") from None


def cmd_data(args: argparse.Namespace) -> int:
    storage = _storage_from_args(args)
    if args.data_command == "inspect":
        from raydeep.datasets.inspect import inspect_path

        print(inspect_path(args.path, storage=storage, samples=args.samples))
        return 0
    from raydeep.cluster.connect import connect
    from raydeep.datasets.prepare.pipeline import PrepareOptions, prepare

    opts = PrepareOptions(
        input=args.input, format=args.format, output=args.output, task=args.task, text_field=args.text_field,
        label_field=args.label_field, tokenizer=args.tokenizer, train_tokenizer=args.train_tokenizer,
        vocab_size=args.vocab_size, max_len=args.max_len, block_size=args.block_size, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, shard_rows=args.shard_rows, seed=args.seed,
        on_bad_record=args.on_bad_record, labels=args.labels.split(",") if args.labels else None,
        shuffle=not args.no_shuffle, overwrite=args.overwrite, storage=storage)
    prepare(opts, verbose=args.debug, start_ray=lambda: connect(args.address, verbose=args.debug))
    return 0


COMMANDS["data"] = cmd_data


def _add_cluster_commands(sub) -> None:
    p = sub.add_parser("submit", help="run raydeep train (or tune) CONFIG on a Ray cluster, as a Ray Job",
                       description="Submit `raydeep train` (or `tune`) as a Ray Job: the project is uploaded as "
                                   "the job's working dir; prints the submission id and the dashboard URL.")
    p.add_argument("config", help="run config YAML, inside the working dir")
    p.add_argument("mode", nargs="?", choices=["train", "tune"], default="train",
                   help="the command the job runs (default: train)")
    _add_overrides(p)
    p.add_argument("--address", help="the head's dashboard, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--working-dir", help="directory uploaded as the job's working dir (default: the project: "
                                         "the nearest directory up from here with pyproject.toml or .git)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--image", help="run the job in this container image (Ray image_uri; nothing is uploaded: "
                                   "the image holds the code, and CONFIG is read inside it)")
    g.add_argument("--pip", action="append", default=[], metavar="REQS",
                   help="install these into the job's environment: a requirements file, or package specs "
                        "separated by spaces (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="forward this variable from this shell to the job's driver and workers, by name: "
                        "its value is never printed or stored in the job's metadata (repeatable)")
    p.add_argument("--wait", action="store_true",
                   help="stream the job's logs until it ends; exit 0 only if it SUCCEEDED")
    _add_wait_flag(p)

    p = sub.add_parser("jobs", help="list, inspect, follow and stop Ray Jobs on a cluster")
    jsub = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    actions = [jsub.add_parser("list", help="submitted jobs, oldest first")]
    for name, help_text in (("status", "a job's status, entrypoint and times"), ("logs", "a job's logs"),
                            ("stop", "stop a job and wait until it has stopped"),
                            ("fetch", "copy a job's run (or sweep) directory here from its run.storage")):
        a = jsub.add_parser(name, help=help_text)
        a.add_argument("id", help="submission id (from `raydeep submit` or `raydeep jobs list`)")
        actions.append(a)
    actions[2].add_argument("--follow", "-f", action="store_true", help="stream the logs until the job ends")
    for a in actions:
        a.add_argument("--address", help="the head's dashboard, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")
    actions[4].add_argument("dir", nargs="?", help="where to put it (default: runs/<its name in run.storage>)")
    _add_pull_flags(actions[4])

    p = sub.add_parser("pull", help="copy a run or sweep folder from run.storage (s3://... or a path) here",
                       description="Copy a run's (or sweep's) folder in run.storage, where raydeep mirrors the whole "
                                   "run directory, to a local directory, byte for byte; checkpoints only with "
                                   "--checkpoints.")
    p.add_argument("source", help="the run's folder: s3://BUCKET/PREFIX/NAME (summary.json's run_storage) or a path")
    p.add_argument("dir", nargs="?", help="where to put it (default: runs/NAME)")
    _add_pull_flags(p)


def _add_pull_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", action="store_true", help="also copy the checkpoint_* folders (large)")
    _add_storage_flags(p)


def cmd_submit(args: argparse.Namespace) -> int:
    from raydeep.cluster.jobs import build_job, submit
    from raydeep.config import load_config
    from raydeep.config_files import read_chain
    from raydeep.errors import ConfigError

    cfg = load_config(args.config, args.overrides)  # a bad value fails here, not minutes into the job
    if args.mode == "tune" and cfg.tune is None:
        raise ConfigError(f"{args.config}: has no tune: section, which `raydeep submit CONFIG tune` needs")
    bases = [name for name, _ in read_chain(args.config)[1:]]  # the job reads them too
    spec = build_job(args.config, args.mode, name=cfg.name, overrides=args.overrides,
                     working_dir=args.working_dir, image=args.image, pip=args.pip, env_names=args.env,
                     wait_for_resources=args.wait_for_resources, bases=bases)
    return submit(spec, address=args.address, wait=args.wait, check_storage=True, run_storage=cfg.run.storage)


def cmd_jobs(args: argparse.Namespace) -> int:
    from raydeep.cluster import jobs
    from raydeep.cluster.dashboard import dashboard_address

    if args.jobs_command == "list":
        sys.stdout.write(jobs.format_jobs(jobs.list_jobs(args.address)))
    elif args.jobs_command == "status":
        info = jobs.job_info(args.id, args.address)
        sys.stdout.write(jobs.format_job(info, dashboard_address(args.address)))
    elif args.jobs_command == "logs":
        jobs.logs(args.id, args.address, follow_logs=args.follow)
    elif args.jobs_command == "fetch":
        return _fetch(args)
    else:
        status = jobs.stop(args.id, args.address)
        print(f"{args.id}: {status}")
        return 0 if status in ("STOPPED", "SUCCEEDED", "FAILED") else 1
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from raydeep.cluster.jobs import STORAGE_EXAMPLE, job_outputs

    info, record = job_outputs(args.id, args.address)
    if record is None:
        raise RaydeepError(f"job {args.id} ({info.status}): its logs name no run outputs: it ended before its run "
                           f"started (raydeep jobs logs {args.id} shows why)")
    if not record.get("uri"):
        raise RaydeepError(f"job {args.id}: its run has no run.storage, so its {'sweep' if record.get('kind') == 'tune' else 'run'} "
                           f"dir is only on the head node {record.get('node')} at {record['run_dir']} (the job's "
                           f"temporary working dir, removed when the Ray session ends): copy it from there, and set "
                           f"run.storage next time, e.g. {STORAGE_EXAMPLE}")
    if not info.status.is_terminal():
        print(f"note: job {args.id} is {info.status}: copying what it has written so far")
    return _pull(args, record["uri"], record)


def _pull(args: argparse.Namespace, source: str, record: dict | None = None) -> int:
    from raydeep.datasets.storage import StorageConfig
    from raydeep.trainers.outputs import pull

    given = _storage_from_args(args)  # the flags, else where the job's config said S3 is
    storage = StorageConfig(endpoint_url=given.endpoint_url or (record or {}).get("endpoint_url"),
                            region=given.region or (record or {}).get("region"), profile=given.profile)
    dest = Path(args.dir) if args.dir else Path("runs") / source.rstrip("/").rsplit("/", 1)[-1]
    files = pull(source, dest, storage, checkpoints=args.checkpoints,
                 key="pull" if args.command == "pull" else "jobs fetch")
    print(f"copied {len(files)} files from {source} to {dest}"
          + ("" if args.checkpoints else " (checkpoints left there: --checkpoints copies them)"))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    return _pull(args, args.source)


COMMANDS["submit"] = cmd_submit
COMMANDS["pull"] = cmd_pull
COMMANDS["jobs"] = cmd_jobs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        # Keep Ray's and DeepSpeed's start-up chatter off the console; errors still show.
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
        os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    from raydeep.cluster.connect import disconnect, prepare_auth_env

    prepare_auth_env(getattr(args, "address", None))
    try:
        return COMMANDS[args.command](args)
    except RaydeepError as exc:
        if args.debug:
            raise
        print(f"raydeep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"raydeep: interrupted{f'; {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into one line
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"raydeep: error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        disconnect()


if __name__ == "__main__":
    sys.exit(main())
