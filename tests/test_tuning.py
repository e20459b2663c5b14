"""Tuning records: importing measured runs (pooled per shape) and reading knobs back."""
import argparse

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
    import_results([_doc([(failed, 4.0, False)])], tmp_path)  # a run of chosen knobs: the untuned time stays
    rec = next(r for r in load("sm_90", tmp_path).records if r.n == 4096)
    assert rec.knobs == failed and rec.us == 4.0 and rec.default_us == 6.0
    assert {r.device for r in load("sm_90", tmp_path).records} == {"test GPU"}
    import_results([{**_doc([(deep, 3.0, False)]), "device": "other GPU"}], tmp_path)  # each record its own GPU
    assert {(r.n, r.device) for r in load("sm_90", tmp_path).records} == {(4096, "other GPU"), (11008, "test GPU")}
    with pytest.raises(ValueError, match="architectures"):
        import_results([first, {**second, "arch": "sm_80"}], tmp_path)


def test_rounds_of_the_same_candidates_are_averaged(tmp_path):
    """Two rounds of one candidate set: each candidate is timed by its mean, so the one that was fastest in a single
    round only loses to the steadier one; a candidate wrong in any round is out."""
    base, lucky, steady = (knobs_to_dict(kn) for kn in (GemvKnobs(), GemvKnobs(steps=8), GemvKnobs(rows_inner=4)))
    broken = knobs_to_dict(GemvKnobs(threads_k=64))
    first = _doc([(base, 6.0, True), (lucky, 4.0, False), (steady, 4.4, False), (broken, 1.0, False)])
    second = _doc([(base, 6.2, True), (lucky, 5.2, False), (steady, 4.6, False), (broken, None, False)])
    import_results([first, second], tmp_path)
    (rec,) = load("sm_90", tmp_path).records
    assert rec.knobs == steady and rec.us == pytest.approx(4.5) and rec.default_us == pytest.approx(6.1)


def test_gemm_records_are_kept_per_rows_of_x_and_looked_up_by_them(tmp_path, monkeypatch):
    """A GEMM shape tuned at 128 and at 512 rows keeps both records; ``lookup`` takes the nearest rows."""
    from sqcompile.kernels.knobs import GemmKnobs
    from sqcompile.targets import tuning

    def doc(m: int, knobs: GemmKnobs) -> dict:
        return {"arch": "sm_90", "device": "test GPU", "configs": [{
            "kind": "gemm", "n": 4096, "k": 11008, "bits": 3, "sparse": False, "m": m,
            "candidates": [{"name": "c0", "knobs": knobs_to_dict(knobs), "us": 1.0, "default": True, "rel_err": 0}]}]}

    small, large = GemmKnobs(tile_m=64), GemmKnobs(tile_m=256)
    import_results([doc(128, small), doc(512, large)], tmp_path)
    recs = load("sm_90", tmp_path)
    assert len(recs.records) == 2 and recs.exact("gemm", 4096, 11008, 3, False, 128) == small
    monkeypatch.setattr(tuning, "_cached", lambda arch: recs)
    assert tuning.lookup("sm_90", "gemm", 4096, 11008, 3, False, m=100) == small
    assert tuning.lookup("sm_90", "gemm", 4096, 4096, 3, False, m=2048) == large


def test_a_models_own_shapes_are_tuned_as_decode_gemvs_only():
    """``sqcompile tune --shapes``: the GEMVs of the given N x K at the given widths, dense and sparse, each over
    its whole search space (the untuned default first); no prefill GEMMs. Bad shapes or widths are refused."""
    from sqcompile.kernels.export import benchmark_configs, gemv_space, parse_shapes
    from sqcompile.kernels.tune import run

    shapes = parse_shapes("960x576, 576X576,960x576")
    assert shapes == ((960, 576), (576, 576))
    cfgs = benchmark_configs("sm_90", None, shapes, (3,), prefill=False)
    assert [(c.kind, c.n, c.k, c.bits, c.sparse) for c, _ in cfgs] == [
        ("gemv", 960, 576, 3, False), ("gemv", 960, 576, 3, True), ("gemv", 576, 576, 3, False),
        ("gemv", 576, 576, 3, True)]
    for cfg, cands in cfgs:
        assert cands == gemv_space(cfg.n, cfg.k, 3, cfg.sparse) and cands[0].reg_words == 4
    assert any(c.kind == "gemm" for c, _ in benchmark_configs("sm_90", 1))  # the 7B set keeps its prefill
    for bad in ("576", "576x", "0x576", "576x-1", "axb"):
        with pytest.raises(ValueError, match="N x K"):
            parse_shapes(bad)
    args = argparse.Namespace(target="cuda", arch="sm_90", import_results=None, export="unused", shapes=None,
                              bits="3")
    with pytest.raises(ValueError, match="--bits picks the widths of --shapes"):
        run(args)
    with pytest.raises(ValueError, match="bits"):
        run(argparse.Namespace(**{**vars(args), "shapes": "576x576", "bits": "5"}))


def test_a_shape_without_a_record_says_once_whose_knobs_it_runs(caplog, monkeypatch):
    """The nearest record can be a far shape's schedule (NOTES.md v22: SmolLM2 on 4096x4096's ran 12% slower than on
    its own records): the build says so once per shape, with the command that measures one."""
    import logging

    from sqcompile.targets import tuning
    from sqcompile.targets.tuning import lookup

    monkeypatch.setattr(tuning, "_FALLBACKS_LOGGED", set())  # whatever earlier tests looked up
    with caplog.at_level(logging.INFO, logger="sqcompile.targets.tuning"):
        for _ in range(3):
            assert lookup("sm_90", "gemv", 2000, 2000, 3, False) == lookup("sm_90", "gemv", 4096, 4096, 3, False)
        lookup("sm_90", "gemv", 4096, 4096, 3, False)  # exact: nothing to say
    (said,) = [r.getMessage() for r in caplog.records]
    assert "3-bit GEMV 2000x2000" in said and "4096x4096" in said and "--shapes 2000x2000" in said
