"""``dfgan`` command line: parses arguments and calls one function per command. No logic lives here.

Each area keeps its commands in its own module (``COMMAND_MODULES``), registering them with ``@command``.
Handlers import what they run when they run, so that ``dfgan --help`` does not load torch, MLflow and Optuna.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

Setup = Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]
_COMMANDS: dict[str, tuple[Setup, str]] = {}


def command(name: str, help: str):
    """Register ``dfgan NAME``: the decorated function adds its arguments and returns the handler."""

    def deco(setup: Setup) -> Setup:
        if name in _COMMANDS:
            raise ValueError(f"command '{name}' registered twice")
        _COMMANDS[name] = (setup, help)
        return setup

    return deco


def spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment spec")
    g.add_argument("--variant", "-v", help="named variant under ablations/variants (default: full)")
    g.add_argument("--spec", help="a spec YAML file instead of a variant (may 'extends: <variant>')")
    g.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="dotted overrides, e.g. train.steps=200 model.nf=16 data.imsize=64")


def tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                   "sqlite:///<train.out_dir>/mlflow.db)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def load_spec_from(args):
    from dfgan.experiment import resolve_spec

    return resolve_spec(args.variant, args.spec, args.overrides)


# ---- train ------------------------------------------------------------------------------------------------------
@command("train", "train one experiment spec (a variant plus overrides) and log it to MLflow")
def _train_args(p):
    spec_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--restart", action="store_true", help="delete the run folder's checkpoint and start over")
    tracking_args(p)
    return _train


def _train(args) -> int:
    from dfgan.tracking import Tracker
    from dfgan.train.loop import train

    spec = load_spec_from(args)
    if args.resume:  # a run of this spec on other data is never continued, nor silently started anew
        from dfgan.run_identity import refuse_resume_on_other_data

        refuse_resume_on_other_data(spec)
    tracker = Tracker.for_spec(spec, enabled=False if args.no_track else None, uri=args.tracking_uri)
    res = train(spec, resume=args.resume, restart=args.restart, progress=not args.quiet, tracker=tracker)
    print(json.dumps({"run_dir": str(res.run_dir), "mlflow_run_id": res.run_id, "steps": res.steps,
                      "seconds": round(res.seconds, 1), "last_losses": res.last_losses,
                      "metrics": {k: round(v, 4) for k, v in res.evaluation.items()}}, indent=2))
    return 0


# ---- params -----------------------------------------------------------------------------------------------------
@command("params", "number of parameters (NoP) per module of a spec, with the counting rule")
def _params_args(p):
    spec_args(p)
    p.add_argument("--nf", type=int, help="shortcut for model.nf=N")
    p.add_argument("--imsize", type=int, help="shortcut for data.imsize=N")
    p.add_argument("--vocab", type=int, default=5450,
                   help="vocabulary size for the text encoder's count (default 5450, CUB's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return _params


def _params(args) -> int:
    from dfgan.experiment import spec_nop

    if args.nf:
        args.overrides.append(f"model.nf={args.nf}")
    if args.imsize:
        args.overrides.append(f"data.imsize={args.imsize}")
    spec = load_spec_from(args)
    rep = spec_nop(spec, vocab_size=args.vocab)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        from dfgan.metrics.nop import format_nop_report

        print(format_nop_report(rep))
    return 0


# ---- variants ---------------------------------------------------------------------------------------------------
@command("variants", "list the named variants with a line each and their NoP")
def _variants_args(p):
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--imsize", type=int, default=256)
    p.add_argument("--json", action="store_true")
    return _variants


def _variants(args) -> int:
    from dfgan.experiment import resolve_spec, spec_nop
    from dfgan.variants import variant_names

    rows = []
    for name in variant_names():
        spec = resolve_spec(name, overrides=[f"model.nf={args.nf}", f"data.imsize={args.imsize}"])
        nop = spec_nop(spec)["totals"]
        rows.append({"variant": name, "description": spec.description,
                     "nop_trainable": nop["trainable"]["count"]})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"NoP = G + D + heads, at nf={args.nf}, {args.imsize} px")
        for r in rows:
            print(f"{r['variant']:24s} {r['nop_trainable']:>12,d}  {r['description']}")
    return 0


# ---- spec -------------------------------------------------------------------------------------------------------
@command("spec", "print the resolved spec (YAML) and its hash, after validation")
def _spec_args(p):
    spec_args(p)
    return _spec


def _spec(args) -> int:
    from dfgan.run_identity import run_hash

    spec = load_spec_from(args)
    print(spec.to_yaml() + f"# hash: {run_hash(spec)}")
    return 0


# ---- entry point ------------------------------------------------------------------------------------------------
COMMAND_MODULES = ("dfgan.cli.data", "dfgan.cli.runs", "dfgan.cli.study", "dfgan.cli.tracking")


def _load_command_modules() -> None:
    import importlib

    for mod in COMMAND_MODULES:
        importlib.import_module(mod)


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(
        prog="dfgan",
        description="DF-GAN study harness: train, evaluate and compare text-to-image GAN components.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  dfgan train --variant full\n  dfgan train --variant no_magp train.steps=200\n"
               "  dfgan params --variant full --nf 32 --imsize 256 --json\n  dfgan variants",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (setup, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=setup(p))
    return parser


def _is_override(token: str) -> bool:
    return "=" in token and not token.startswith("-")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``, accepting ``key.path=value`` overrides anywhere among the options of a command that takes
    overrides (``dfgan train --variant full data.root=x --quiet train.steps=3``): argparse reads the positional
    overrides as one run, so those after an option come back unrecognised; they are appended in their order."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [t for t in extra if _is_override(t)]
    rest = [t for t in extra if not _is_override(t)]
    if overrides and not isinstance(getattr(args, "overrides", None), list):
        rest = extra  # this command takes no overrides
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if overrides:
        args.overrides.extend(overrides)
    return args


def _tune_allocator(argv: list[str] | None) -> None:
    """Re-exec once with glibc malloc thresholds raised: PyTorch CPU steps run up to 2x faster and far less
    noisy (the default trims and mmaps big blocks on every step). glibc reads them only at start-up.
    Set DFGAN_NO_MALLOC_TUNING=1 to opt out; the setting in force is recorded with every run."""
    import os
    import platform

    from dfgan.runtime import MALLOC_ENV

    if (platform.system() != "Linux" or os.environ.get("DFGAN_NO_MALLOC_TUNING")
            or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())):
        return
    os.environ.update(MALLOC_ENV)
    args = sys.argv[1:] if argv is None else argv
    os.execv(sys.executable, [sys.executable, "-m", "dfgan", *args])


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _tune_allocator(argv)
    from dfgan.registry import RegistryError
    from dfgan.runs import CheckpointMismatchError, RunBusyError, RunExistsError
    from dfgan.runtime import sigterm_as_interrupt
    from dfgan.spec import SpecError
    from dfgan.tracking import TrackingError
    from dfgan.train.step import NonFiniteLossError

    USER_ERRORS = (RegistryError, CheckpointMismatchError, RunExistsError, RunBusyError, NonFiniteLossError,
                   TrackingError, FileNotFoundError, ValueError)

    args = parse_args(argv)
    sigterm_as_interrupt()  # `kill PID` ends a run like Ctrl-C: marked KILLED, temporaries removed
    try:
        return int(args.handler(args) or 0)
    except SpecError as e:
        print(f"dfgan: {e}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:  # bad input or state the user can fix: the message says what and where
        print(f"dfgan: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a file-size limit, a read-only folder: no traceback, the file named
        print(f"dfgan: {os_error_text(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dfgan: interrupted", file=sys.stderr)
        return 130


def os_error_text(e: OSError) -> str:
    import errno

    text = str(e.strerror or e)
    if e.filename and str(e.filename) not in text:
        text += f" ({e.filename})"
    hint = {errno.ENOSPC: "the disk is full: free space and resume (--resume) from the last checkpoint",
            errno.EDQUOT: "the disk quota is used up: free space and resume (--resume) from the last checkpoint",
            errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}.get(e.errno)
    return f"{type(e).__name__}: {text}" + (f"; {hint}" if hint and hint not in text else "")


if __name__ == "__main__":
    sys.exit(main())
