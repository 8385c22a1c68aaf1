"""Which project modules run while `omnidistill label` plans its shards and labels one shard (from the
plan entry to its Parquet row): sys.setprofile in every thread, recording while a ``plan`` or
``pseudo_label_planned_shard`` call of dd_core.pseudo is active. Runs on the code on PYTHONPATH:

    python bench/trace_modules.py OUT.json -- label --checkpoint CKPT --images DIR --labeled JSON --out OUT --scales 64
"""
import json, os, sys, threading
ROOT = os.getcwd()
seen = {"shard": set(), "plan": set()}
WATCH = {"pseudo_label_planned_shard": "shard", "plan": "plan"}
stack = []
def prof(frame, event, arg):
    code = frame.f_code
    f = code.co_filename
    if event == "call":
        name = WATCH.get(code.co_name)
        if name and f.startswith(ROOT) and ("pseudo/infer.py" in f or "pseudo/pipeline.py" in f):
            stack.append(name)
        if stack and f.startswith(ROOT) and "/.venv/" not in f:
            seen[stack[-1]].add(os.path.relpath(f, ROOT))
    elif event == "return":
        name = WATCH.get(code.co_name)
        if name and f.startswith(ROOT) and ("pseudo/infer.py" in f or "pseudo/pipeline.py" in f) and stack:
            stack.pop()
sys.setprofile(prof); threading.setprofile(prof)
out = sys.argv[1]; args = sys.argv[sys.argv.index("--") + 1:]
from flows.cli import main
try:
    rc = main(args)
finally:
    sys.setprofile(None)
    json.dump({k: sorted(v) for k, v in seen.items()}, open(out, "w"), indent=1)
print("rc", rc)
