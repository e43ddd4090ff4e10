"""The ``irgraph`` command (also ``python -m irgraph``).

    irgraph demo                      train, fold, check and time a CNN on digits (no flags)
    irgraph show model.py:Net --input 8,1,28,28 [--emit ir|dot|svg|llvm|asm|triton]
    irgraph run FOLDER INPUTS.npz [-o out.npz] [--backend llvm]
    irgraph check model.py --input 8,16   every backend vs the reference, node by node
    irgraph bench [--quick]           the benchmark table of bench/bench_llvm.py

Exit codes: 0 success; 1 failure (an error while running, a backend that diverges from the
reference); 2 usage error (bad arguments, a missing file, a file that does not define what
was asked). ``show`` and ``check`` execute the Python file they are given (it is imported,
as ``python FILE.py`` would run it): give them only files you trust.
"""
from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

EPILOG = ("exit codes: 0 ok, 1 failure or divergence from the reference, 2 usage error. "
          "show and check import (execute) the Python file they are given.")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="FILE.py[:NAME]",
                   help="a Python file and the nn.Module subclass/instance or function in it "
                        "(NAME may be left out when the file defines just one)")
    p.add_argument("--input", action="append", metavar="SHAPE",
                   help="one per input, in order: 8,16 (float32) or f32[8,16], i64[8]")
    p.add_argument("--passes", default="default",
                   help="pass pipeline, comma-separated (default: the inference pipeline; "
                        "'none' for the traced graph)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and random inputs")
    p.add_argument("--train", action="store_true",
                   help="trace a model in training mode (default: eval mode)")


def build_parser() -> argparse.ArgumentParser:
    from .demo import OPTIMIZERS
    backends = ["reference", "llvm", "triton"]
    ap = argparse.ArgumentParser(prog="irgraph", description="irgraph: a deep-learning "
                                 "compiler (DSL -> IR -> passes -> LLVM/Triton).",
                                 epilog=EPILOG)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="train, fold, check and time a CNN on the digits",
                       description="Train a CNN with batch norm on the 1,797 8x8 digits that "
                       "ship with irgraph, compiled; fold batch norm; report held-out "
                       "accuracy, the cross-backend check and step times; save the model.",
                       epilog=EPILOG)
    d.add_argument("--backend", choices=backends, default="llvm")
    d.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="first-order ones train the CNN; newton, cg, bfgs and lbfgs a "
                        "logistic regression (few parameters)")
    d.add_argument("--epochs", type=int, default=None,
                   help="default 8 (15 iterations for second-order optimizers)")
    d.add_argument("--plot", action="store_true", help="loss/accuracy curves and the graph "
                   "as pictures (matplotlib; Graphviz dot)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="irgraph-demo", metavar="DIR",
                   help="where the saved model and pictures go (default ./irgraph-demo)")
    d.add_argument("--quick", action="store_true", help="fewer timing repetitions")

    s = sub.add_parser("show", help="print a model's IR (or DOT, SVG, LLVM IR, assembly, "
                       "Triton code)", epilog=EPILOG)
    _target_args(s)
    s.add_argument("--emit", choices=["ir", "dot", "svg", "llvm", "asm", "triton"],
                   default="ir", help="ir: before and after --passes (default)")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")

    r = sub.add_parser("run", help="run a saved model (irgraph.save) on inputs from a .npz",
                       epilog=EPILOG)
    r.add_argument("folder", metavar="FOLDER", help="a folder written by irgraph.save")
    r.add_argument("inputs", metavar="INPUTS.npz",
                   help="arrays named as the graph's inputs (or arr_0, arr_1, ... in order)")
    r.add_argument("-o", "--output", help="outputs .npz (default outputs.npz): output_0, ...")
    r.add_argument("--backend", choices=backends, default="llvm")

    c = sub.add_parser("check", help="every backend vs the reference; the first divergent "
                       "node", epilog=EPILOG)
    _target_args(c)
    c.add_argument("--backend", action="append", choices=backends,
                   help="backend(s) to check (default: every available one)")
    c.add_argument("--inputs", metavar="INPUTS.npz", help="inputs (default: seeded random)")
    c.add_argument("--rtol", type=float, default=1e-4)
    c.add_argument("--atol", type=float, default=1e-5)
    c.add_argument("--per-node", action="store_true",
                   help="print every node's difference (default: the largest ones when a "
                        "backend diverges)")

    b = sub.add_parser("bench", help="the benchmark table of bench/bench_llvm.py",
                       epilog=EPILOG)
    b.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sizes")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .pictures import MissingTool
    from .target import UsageError
    ap = build_parser()
    args = ap.parse_args(argv)          # exits with 2 on bad arguments
    if args.command is None:
        ap.print_help(sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    try:
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(args, out)
        from . import commands
        return getattr(commands, f"cmd_{args.command}")(args, out)
    except UsageError as e:
        print(f"irgraph {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except MissingTool as e:
        print(f"irgraph {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as e:      # a failure while running: say what, no traceback wall
        print(f"irgraph {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILURE


__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]
