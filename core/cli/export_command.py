"""``miraslab export RUN --hf DIR``: a run as a transformers model directory (docs/ecosystem.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "export",
        help="write a run as a Hugging Face transformers model directory (pip install 'miraslab[hf]')",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory written by miraslab train")
    parser.add_argument(
        "--hf", type=Path, required=True, metavar="DIR", help="the directory to write (from_pretrained(DIR))"
    )
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory instead of the run's latest")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..hf import require_transformers

    require_transformers()
    from ..hf.export import export_run

    out = export_run(args.run_dir, args.hf, args.checkpoint)
    print(
        f"exported {args.run_dir} to {out}: "
        f"AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)"
    )
    return 0
