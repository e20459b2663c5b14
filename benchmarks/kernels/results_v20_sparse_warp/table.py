"""The tables of NOTES.md v20 from this folder's runs (no GPU):

    python benchmarks/kernels/results_v20_sparse_warp/table.py

1. dense and +0.45% GEMVs before (``before_round*``: the tree before, its records) and after (``tune_round*``:
   the new kernel over the sparse space, the fastest schedule), each time the mean of the two rounds of one call;
2. the discarded shared-atomics variant at the old records against the tree before, in its own call
   (``tried_shared_atomics*``)."""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def configs(name: str) -> dict:
    doc = json.loads((HERE / name).read_text())
    return {(c["n"], c["k"], c["bits"], c["sparse"]): c for c in doc["configs"]}


def mean_us(runs: list[dict], key: tuple, i: int) -> float:
    return sum(r[key]["candidates"][i]["us"] for r in runs) / len(runs)


before = [configs(f"before_round{r}_h200.json") for r in (1, 2)]
after = [configs(f"tune_round{r}_h200.json") for r in (1, 2)]
print("| N x K | bits | dense, before / after | +0.45% before (record) | +0.45% after (new record) | cuBLAS fp16 | "
      "x fp16, +0.45% |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for key in (k for k in after[0] if not k[3]):
    sparse = key[:3] + (True,)
    best = min(range(len(after[0][sparse]["candidates"])), key=lambda i: mean_us(after, sparse, i))
    dense_b, dense_a = mean_us(before, key, 0), mean_us(after, key, 0)
    sparse_b, sparse_a = mean_us(before, sparse, 0), mean_us(after, sparse, best)
    cublas = sum(r[sparse]["cublas_us"] for r in before + after) / 4
    print(f"| {key[0]}x{key[1]} | {key[2]} | {dense_b:.2f} / {dense_a:.2f} | {sparse_b:.2f} "
          f"({100 * (sparse_b / dense_b - 1):+.0f}%) | {sparse_a:.2f} ({100 * (sparse_a / dense_a - 1):+.1f}%) | "
          f"{cublas:.2f} | {cublas / sparse_b:.2f} -> {cublas / sparse_a:.2f} |")

old, atomics = configs("tried_shared_atomics_before_h200.json"), configs("tried_shared_atomics_h200.json")
print("\nshared atomics at the old records (us, before -> atomics):")
for key in (k for k in old if k[3]):
    b, a = old[key]["candidates"][0]["us"], atomics[key]["candidates"][0]["us"]
    print(f"  {key[0]}x{key[1]} {key[2]}-bit: {b:.2f} -> {a:.2f} ({a / b:.2f}x)")
