"""``raydeep`` command line: parses arguments, loads the config, calls one function per command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from raydeep.errors import RaydeepError


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, e.g. --set model.layers=6 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raydeep", description=__doc__.split(":")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Ray's own logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one config on Ray (embedded local Ray unless --address)",
                       description="Train one config: Ray Data -> DeepSpeed workers -> metrics, checkpoints.")
    p.add_argument("config", nargs="?", help="run config YAML (omit with --resume)")
    _add_overrides(p)
    p.add_argument("--run-dir", help="output directory (default: runs/<name>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted or finished run from its latest checkpoint "
                        "(its config.yaml, plus any --set, e.g. --set run.epochs=10)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")

    p = sub.add_parser("config", help="inspect configs")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="print the resolved config (defaults filled, overrides applied)")
    show.add_argument("config")
    _add_overrides(show)

    p = sub.add_parser("evaluate", help="metrics and confusion matrix of a checkpoint on a data set")
    p.add_argument("checkpoint", help="a run directory (uses its best checkpoint) or a checkpoint directory")
    p.add_argument("--data", required=True, help="parquet split to evaluate on (same forms as data.val)")
    p.add_argument("--out", help="JSON output path (default: evaluation.json in the run directory)")
    p.add_argument("--batch-size", type=int, default=256)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from raydeep.config import load_config
    from raydeep.trainers.driver import train

    if args.resume:
        if args.config:
            raise RaydeepError("train: give either CONFIG or --resume RUN_DIR, not both")
        run_dir = Path(args.resume)
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        train(cfg, run_dir=run_dir, address=args.address, resume=True, verbose=args.debug)
        return 0
    if not args.config:
        raise RaydeepError("train: missing CONFIG (or --resume RUN_DIR)")
    cfg = load_config(args.config, args.overrides)
    train(cfg, run_dir=args.run_dir, address=args.address, verbose=args.debug)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from raydeep.config import load_config, to_yaml

    sys.stdout.write(to_yaml(load_config(args.config, args.overrides)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raydeep.trainers.evaluate import evaluate_command

    evaluate_command(args.checkpoint, args.data, out=args.out, batch_size=args.batch_size)
    return 0


COMMANDS = {"train": cmd_train, "config": cmd_config, "evaluate": cmd_evaluate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        # Keep Ray's and DeepSpeed's start-up chatter off the console; errors still show.
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
        os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    from raydeep.cluster.connect import prepare_auth_env

    prepare_auth_env(getattr(args, "address", None))
    try:
        return COMMANDS[args.command](args)
    except RaydeepError as exc:
        if args.debug:
            raise
        print(f"raydeep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("raydeep: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into one line
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"raydeep: error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
