"""``segexp-upload <run_dir>``: send what a run buffered while its tracking server was away."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from segexp.core.errors import TrackingUnavailable
from segexp.tracking.outbox import upload


def main(argv: list[str] | None = None) -> int:
    """Upload ``run_dir``'s outbox; exit 1 when the server still cannot be reached."""
    parser = argparse.ArgumentParser(prog="segexp-upload", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_dir", type=Path, help="training run folder (holds mlflow_run.json and mlflow_outbox.jsonl)"
    )
    parser.add_argument("--tracking-uri", default=None, help="another address of the same store (default: the run's)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        count = upload(args.run_dir, args.tracking_uri, args.timeout)
    except TrackingUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.run_dir}: " + (f"uploaded {count} buffered logging calls" if count else "nothing to upload"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
