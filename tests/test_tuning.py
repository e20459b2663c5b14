"""Tuning records: importing measured runs (pooled per shape) and reading knobs back."""
import pytest

from sqcompile.kernels.knobs import GemvKnobs, knobs_to_dict
from sqcompile.kernels.tune import import_results
from sqcompile.targets.tuning import load


def _doc(candidates: list[tuple[dict, float | None, bool]], n: int = 4096) -> dict:
    return {"arch": "sm_90", "device": "test GPU", "configs": [{
        "kind": "gemv", "n": n, "k": 4096, "bits": 3, "sparse": False, "m": 1,
        "candidates": [{"name": f"c{i}", "knobs": kn, "us": us, "default": d, "rel_err": 0.0}
                       for i, (kn, us, d) in enumerate(candidates)]}]}


def test_runs_are_pooled_per_shape_and_the_fastest_correct_one_wins(tmp_path):
    base, deep = knobs_to_dict(GemvKnobs()), knobs_to_dict(GemvKnobs(steps=8))
    failed = knobs_to_dict(GemvKnobs(threads_k=64))
    first = _doc([(base, 6.0, True), (failed, None, False)])
    second = _doc([(deep, 4.5, False)])
    import_results([first, second], tmp_path)
    (rec,) = load("sm_90", tmp_path).records
    assert rec.knobs == deep and rec.us == 4.5 and rec.default_us == 6.0
    assert load("sm_90", tmp_path).exact("gemv", 4096, 4096, 3, False) == GemvKnobs(steps=8)
    assert load("sm_90", tmp_path).exact("gemv", 4096, 4096, 3, True) is None  # exact: no nearest shape
    import_results([_doc([(base, 5.0, True)], n=11008)], tmp_path)  # another shape keeps the first record
    assert len(load("sm_90", tmp_path).records) == 2
    with pytest.raises(ValueError, match="architectures"):
        import_results([first, {**second, "arch": "sm_80"}], tmp_path)
