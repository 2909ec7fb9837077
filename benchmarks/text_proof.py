"""Issue 36's text proof as one table: for each (hybrid, twin) pair of text runs, what the memory
carries beyond the attention window, against its own reset and against its sliding-window twin.

    python benchmarks/text_proof.py --pair runs/hybrid-shift runs/hybrid-shift-swa
    python benchmarks/text_proof.py --pair A A-swa --pair B B-swa --heldout --json proof.json

Each pair runs ``miraslab eval HYBRID --long-range --twin TWIN --json`` on the hybrid's
validation split and, with ``--heldout``, on code from another source than the training corpus:
the installed ``attrs``, ``cattrs`` and ``pluggy`` packages (miraslab's own dependencies, so
present wherever it is).  The targets (issue 36): carry gain >= 2 % of the loss, and on
beyond-window recall hits (a token whose bigram occurred earlier, every occurrence more than W
tokens back) a loss >= 0.5 nats lower with the memory carried than reset and than the twin's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CARRY_SHARE, BEYOND_GAIN = 0.02, 0.5


def heldout_files() -> list[str]:
    """The .py files of attrs, cattrs and pluggy: code from another source than the stdlib."""
    import attr
    import cattrs
    import pluggy

    return sorted(
        str(p) for m in (attr, cattrs, pluggy) for p in Path(os.path.dirname(m.__file__)).glob("*.py")
    )


def evaluate(hybrid: Path, twin: Path, text: list[str] | None) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "miraslab",
        "eval",
        str(hybrid),
        "--long-range",
        "--twin",
        str(twin),
        "--json",
    ]
    if text:
        command += ["--text", *text, "--plot", str(hybrid / "long_range_heldout.png")]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[2:8])}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout)


def row(hybrid: Path, data: str, result: dict[str, Any]) -> dict[str, Any]:
    total, beyond = result["all"], result["classes"]["beyond"]
    carried = total["loss"]["carried"]["mean"]
    return {
        "run": hybrid.name,
        "data": data,
        "tokens": total["tokens"],
        "beyond_tokens": beyond["tokens"],
        "loss": carried,
        "twin_loss": total["loss"]["twin"]["mean"],
        "carry_gain": total["gain"]["carry"],
        "carry_share": total["gain"]["carry"]["mean"] / carried,
        "beyond_carry_gain": beyond["gain"]["carry"],
        "beyond_twin_gain": beyond["gain"]["twin"],
        "twin_gain": total["gain"]["twin"],
    }


def _ci(gain: dict[str, float]) -> str:
    return f"{gain['mean']:+.3f} [{gain['low']:.3f}, {gain['high']:.3f}]"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | data | loss (twin) | carry gain, all tokens | carry gain on beyond-window hits "
        "(reset − carried) | gain over the twin on beyond-window hits | gain over the twin, all tokens | targets met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = (
            r["carry_share"] >= CARRY_SHARE
            and r["beyond_carry_gain"]["mean"] >= BEYOND_GAIN
            and r["beyond_twin_gain"]["mean"] >= BEYOND_GAIN
        )
        lines.append(
            f"| {r['run']} | {r['data']} | {r['loss']:.3f} ({r['twin_loss']:.3f}) | "
            f"{r['carry_gain']['mean']:+.3f} ({100 * r['carry_share']:.1f} %) | {_ci(r['beyond_carry_gain'])} | "
            f"{_ci(r['beyond_twin_gain'])} | {_ci(r['twin_gain'])} | {'yes' if met else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pair", nargs=2, action="append", type=Path, metavar=("HYBRID", "TWIN"), required=True
    )
    parser.add_argument("--heldout", action="store_true", help="also on attrs, cattrs and pluggy's code")
    parser.add_argument("--text", nargs="+", help="also on these local files instead (--heldout's source)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    heldout = args.text or (heldout_files() if args.heldout else None)
    source = ", ".join(Path(f).name for f in args.text) if args.text else "attrs, cattrs, pluggy"
    rows = []
    for hybrid, twin in args.pair:
        rows.append(row(hybrid, "validation", evaluate(hybrid, twin, None)))
        if heldout:
            rows.append(row(hybrid, source, evaluate(hybrid, twin, heldout)))
        print(markdown(rows[-2 if heldout else -1 :]).splitlines()[-1], file=sys.stderr, flush=True)
    print(
        f"Targets: carry gain >= {100 * CARRY_SHARE:g} % of the loss; on beyond-window recall hits "
        f">= {BEYOND_GAIN} nats below the reset and below the twin (95 % bootstrap intervals over rows).\n"
    )
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
