"""``stagetune-export``: a run's model as one self-contained file (TorchScript or ONNX), checked.

The file needs neither stagetune nor the run's config: TorchScript loads with ``torch.jit.load``,
ONNX with any ONNX runtime. The sample batch is the first validation batch (at most 8 examples)
without its target, so the file is traced on real inputs; it must then reproduce the
checkpoint's outputs on that batch within 1e-5, or the export fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stagetune.failures import console_command
from stagetune.runs.export import FORMATS, TOLERANCE, export
from stagetune.runs.outputs import check_output
from stagetune.runs.rundir import RunDir
from stagetune.runs.trained import load_trained


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stagetune-export", description="Write a run's model as a self-contained file.")
    ap.add_argument("run_dir")
    ap.add_argument("--format", required=True, choices=list(FORMATS))
    ap.add_argument("--out", help="file to write (default: RUN_DIR/export/model.pt or model.onnx); never an existing file")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists, even inside a run's records")
    ap.add_argument("--ckpt", default="best", choices=["best", "last"])
    return ap


@console_command("stagetune-export")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    name = f"model{FORMATS[args.format]}"
    out = check_output(Path(args.out) if args.out else RunDir(args.run_dir).path / "export" / name, args.force, name)
    trained = load_trained(args.run_dir, args.ckpt, "cpu")
    diff = export(trained, args.format, out, args.force)
    print(f"wrote {out}; max difference from the checkpoint's outputs: {diff:.2e}")
    if not diff <= TOLERANCE:
        print(f"stagetune-export: error: {out} differs from the checkpoint by {diff:.2e} (> {TOLERANCE:g})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    main()
