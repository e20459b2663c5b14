"""The tables of NOTES.md v22 from this folder's runs (no GPU):

    python benchmarks/kernels/results_v22_default/table.py

1. Per Llama-2-7B GEMV shape at 3 bits, dense and +0.45%: the untuned default before v22 (the shared pair table), the
new one (the register table, rows and batches as before) and the sm_90 record, each the mean of the rounds of one
call (``ab_round*_h200.json``, candidates matched by their knobs; the record's knobs from
``targets/records/sm_90.json``, unchanged in v22 but at 4096x4096).
2. ``placement.py``'s trials (one call each): each kernel's time with the candidates in the manifest's order
   (``fwd``: new default, old default, record) and reversed (``rev``), before (``placement_before_h200.json``) and after
   (``placement_after_h200.json``) every candidate was made to follow the same cuBLAS kernel."""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROUNDS = sorted(HERE.glob("ab_round*_h200.json"))
RECORDS = {(r["kind"], r["n"], r["k"], r["bits"], r["sparse"]): r["knobs"]  # the records as v22's A/B ran them
           for r in json.loads((HERE.parents[2] / "targets/records/sm_90.json").read_text())["records"]}
RECORDS[("gemv", 4096, 4096, 3, False)] = RECORDS[("gemv", 4096, 4096, 3, True)] = {
    "threads_k": 128, "rows_y": 1, "rows_inner": 4, "steps": 2, "pairs": True, "layout": "row_warps", "reg_words": 4}


def by_knobs(cfg: dict) -> dict:
    return {json.dumps(c["knobs"], sort_keys=True): c for c in cfg["candidates"]}


docs = [json.loads(p.read_text()) for p in ROUNDS]
print(f"{docs[0]['device']}, {len(docs)} rounds, copy {min(d['copy_tbps'] for d in docs):.2f}-"
      f"{max(d['copy_tbps'] for d in docs):.2f} TB/s, worst relative error "
      f"{max(c['rel_err'] for d in docs for cfg in d['configs'] for c in cfg['candidates']):.1e}")
print("| N x K | sparse | old default (pair table) | new default (register table) | record (knobs) | cuBLAS fp16 |")
print("| --- | --- | --- | --- | --- | --- |")
for i, cfg in enumerate(docs[0]["configs"]):
    cands = [by_knobs(d["configs"][i]) for d in docs]
    mean = {kn: sum(c[kn]["us"] for c in cands) / len(cands) for kn in cands[0]}
    new, old = (json.dumps(c["knobs"], sort_keys=True) for c in cfg["candidates"][:2])
    kn = RECORDS[("gemv", cfg["n"], cfg["k"], cfg["bits"], cfg["sparse"])]
    rec = json.dumps(kn, sort_keys=True)
    cublas = sum(d["configs"][i]["cublas_us"] for d in docs) / len(docs)
    print(f"| {cfg['n']}x{cfg['k']} | {'0.45%' if cfg['sparse'] else '-'} | {mean[old]:.2f} | {mean[new]:.2f} "
          f"({100 * (mean[new] / mean[old] - 1):+.1f}%) | {mean[rec]:.2f} ({kn['threads_k']}, {kn['rows_inner']} x "
          f"{kn['steps']}{', = new default' if rec == new else ''}) | {cublas:.2f} |")

print("\nplacement.py: us as min / max / mean of three trials an order (knobs: rows x batches, register words)")
for name in ("before", "after"):
    rows = json.loads((HERE / f"placement_{name}_h200.json").read_text())["rows"]
    times: dict = {}
    for r in rows:
        kn = r["knobs"]
        key = (r["n"], r["k"], r["sparse"], f"{kn['rows_inner']} x {kn['steps']}, {kn['reg_words']}")
        times.setdefault(key, {}).setdefault("rev" if r["reversed"] else "fwd", []).append(r["us"])
    for (n, k, sparse, kn), by_order in times.items():
        cells = "; ".join(f"{order} {min(v):.2f} / {max(v):.2f} / {sum(v) / len(v):.2f}"
                          for order, v in by_order.items())
        print(f"  {name}: {n}x{k} {'0.45%' if sparse else 'dense'} ({kn}): {cells}")
