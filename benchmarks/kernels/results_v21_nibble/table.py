"""The tables of NOTES.md v21 from this folder's runs (no GPU):

    python benchmarks/kernels/results_v21_nibble/table.py

1. the 3-bit GEMVs and prefill GEMMs: the tree before (format 2, ``before_round*``, its records) against this one
   (``tune_round*``) at the old record's knobs and at the fastest schedule of the space, each time the mean of two
   rounds (two calls, both sides in each);
2. the probe that came first (``probe_h200/``, one call; ``probe.patch`` on the tree before): the dense records'
   kernels as they were (``base``), with the nibble layout's decode (``nibble``, on format-2 data: timing only), and
   with no decode at all (``nodecode``: the kernel's floor with its loads, x and reduction as they are);
3. tried, not kept: the high selectors as IMAD.HI (``tried_umulhi.patch``; ``tried_umulhi_round*`` against
   ``tried_umulhi_base_round*``, alternating in one call), the best schedule per shape, mean of the rounds;
4. the 4-bit dense GEMV space on the H200 (``tune4_dense_round*``): the H100 record (first) against the best."""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def configs(name: str) -> dict:
    doc = json.loads((HERE / name).read_text())
    return {(c["kind"], c["m"], c["n"], c["k"], c["sparse"]): c for c in doc["configs"]}


def mean_us(runs: list[dict], key: tuple, i: int) -> float:
    return sum(r[key]["candidates"][i]["us"] for r in runs) / len(runs)


before = [configs(f"before_round{r}_h200.json") for r in (1, 2)]
after = [configs(f"tune_round{r}_h200.json") for r in (1, 2)]
print("| kind | m x N x K | sparse | before | old knobs | best (knobs: threads, rows x batches) | cuBLAS fp16 | x fp16 |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for key in after[0]:
    was, same = mean_us(before, key, 0), mean_us(after, key, 0)
    best = min(range(len(after[0][key]["candidates"])), key=lambda i: mean_us(after, key, i))
    now, kn = mean_us(after, key, best), after[0][key]["candidates"][best]["knobs"]
    knobs = f"{kn['threads_k']}, {kn['rows_inner']} x {kn['steps']}" if kn else "record"
    cublas = sum(r[key]["cublas_us"] for r in before + after) / 4
    print(f"| {key[0]} | {key[1]}x{key[2]}x{key[3]} | {'0.45%' if key[4] else '-'} | {was:.2f} | {same:.2f} "
          f"({100 * (same / was - 1):+.1f}%) | {now:.2f} ({100 * (now / was - 1):+.1f}%; {knobs}) | {cublas:.2f} | "
          f"{cublas / was:.2f} -> {cublas / now:.2f} |")

probe = {v: configs(f"probe_h200/{v}.json") for v in ("base", "nibble", "nodecode")}
print("\nprobe, best schedule of six per shape (us): base / nibble / nodecode")
for key, cfg in probe["base"].items():
    best = {v: min(c["us"] for c in probe[v][key]["candidates"]) for v in probe}
    print(f"  {key[2]}x{key[3]}: {best['base']:.2f} / {best['nibble']:.2f} ({100 * (best['nibble'] / best['base'] - 1):+.1f}%)"
          f" / {best['nodecode']:.2f}")


def best(runs: list[dict], key: tuple) -> tuple[float, dict]:
    i = min(range(len(runs[0][key]["candidates"])), key=lambda i: mean_us(runs, key, i))
    return mean_us(runs, key, i), runs[0][key]["candidates"][i]["knobs"]


base = [configs(f"tried_umulhi_base_round{r}_h200.json") for r in (1, 2)]
umulhi = [configs(f"tried_umulhi_round{r}_h200.json") for r in (1, 2)]
print("\nhigh selectors as IMAD.HI, best schedule per shape (us): this tree -> IMAD.HI")
for key in base[0]:
    was, now = best(base, key)[0], best(umulhi, key)[0]
    print(f"  {key[0]} {key[1]}x{key[2]}x{key[3]}{' +0.45%' if key[4] else ''}: {was:.2f} -> {now:.2f} "
          f"({100 * (now / was - 1):+.1f}%)")

four = [configs(f"tune4_dense_round{r}_h200.json") for r in (1, 2)]
print("\n4-bit dense, H100 record -> best of the space (us; knobs: threads, rows x batches, reg_words)")
for key in four[0]:
    rec, (now, kn) = mean_us(four, key, 0), best(four, key)
    print(f"  {key[2]}x{key[3]}: {rec:.2f} -> {now:.2f} ({100 * (now / rec - 1):+.1f}%; {kn['threads_k']}, "
          f"{kn['rows_inner']} x {kn['steps']}, {kn['reg_words']})")

