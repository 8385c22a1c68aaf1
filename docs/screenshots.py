"""Remake the README's pictures: a run in the Prefect UI (task graph, artifacts) and the report's figures.

    python docs/screenshots.py                       # a quick demo run first (a few minutes)
    python docs/screenshots.py --from demo-runs      # the run of an earlier `make demo`

It starts a Prefect server on the demo's own database (``<out>/prefect``), opens the run's page in
headless Chromium (Debian's ``chromium`` package: ``apt-get install chromium``) and writes the
PNGs to ``docs/images/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES = ROOT / "docs" / "images"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=25000"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found: apt-get install chromium")


def screenshot(url: str, out: Path, size: tuple[int, int] = (1500, 950)) -> None:
    """A PNG of ``url`` as headless Chromium renders it (the UI is a single-page app: it waits for it)."""
    with tempfile.TemporaryDirectory(prefix="omnidistill-chromium-") as profile:
        subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                        f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)
    print(f"wrote {out}")


def latest_run(out: Path) -> tuple[str, Path]:
    """(run id, run folder) of the newest run under ``out/runs`` that finished (has metrics.json)."""
    done = sorted((p.parent for p in (out / "runs").glob("*/metrics.json")), key=lambda p: p.stat().st_mtime)
    if not done:
        raise SystemExit(f"{out}/runs: no finished run (run `make demo` or leave out --from)")
    return done[-1].name, done[-1]


def flow_run_id(run_id: str) -> str:
    """The id of the ``data-distillation`` flow run named ``run_id`` on the current Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id])))
    if not runs:
        raise SystemExit(f"no flow run named {run_id} in this Prefect server's history")
    return str(runs[0].id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="a demo folder with a finished run (default: "
                        "run a quick demo in a temporary folder)")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="omnidistill-screens-") as tmp:
        out = args.source.resolve() if args.source else Path(tmp)
        if args.source is None:
            subprocess.run([sys.executable, "-m", "flows.cli", "demo", "--quick", "--out", str(out)], cwd=ROOT,
                           check=True)
        run_id, run_dir = latest_run(out)
        for figure in ("ap.png", "pseudo_labels.png"):
            shutil.copyfile(run_dir / figure, IMAGES / figure)
            print(f"wrote {IMAGES / figure}")
        from flows.server import local_prefect_server

        with local_prefect_server(out / "prefect") as ui:
            screenshot(f"{ui}/runs/flow-run/{flow_run_id(run_id)}", IMAGES / "prefect-run.png")
            screenshot(f"{ui}/artifacts", IMAGES / "prefect-artifacts.png")  # the UI opens a run on its logs
    print(json.dumps({"run": run_id, "images": sorted(p.name for p in IMAGES.glob("*.png"))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
