"""The tutorial notebooks: stripped in git, generated from their sources, and they run.

Fast tests: every notebook in the repository is committed without outputs, and the five
tutorials are exactly what ``notebooks/make_notebooks.py`` generates from ``notebooks/src``.

Slow tests execute each tutorial headless with nbclient (kernel ``python3``, which
jupyter_client starts with this interpreter; cwd ``notebooks/``), fail on any cell error and
check the numbers the notebook's last cell prints as ``SUMMARY_JSON {...}``. Notebooks 03 and
04 run the tiny policy shipped with the package (``strace_ds.assets.default_policy_dir()``): the
same pinned weights everywhere, nothing to build.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
TUTORIALS = (
    "01_p_trace_derivation.ipynb",
    "02_gspo_special_case.ipynb",
    "03_s_trace_entropy.ipynb",
    "04_training_walkthrough.ipynb",
    "05_credit_study.ipynb",
)
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "build", "dist", ".ipynb_checkpoints"}


def _repo_notebooks() -> list[Path]:
    """Every ``.ipynb`` under the repository, skipping virtualenvs, caches and build outputs."""
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")
                   and not d.startswith(".")]
        found += [Path(root) / f for f in files if f.endswith(".ipynb")]
    return sorted(found)


# ---------------------------------------------------------------------------- fast checks
def test_tutorials_exist():
    missing = [name for name in TUTORIALS if not (NOTEBOOKS / name).is_file()]
    assert not missing, f"missing notebooks: {missing}"


@pytest.mark.parametrize("path", _repo_notebooks(), ids=lambda p: str(p.relative_to(REPO)))
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs or an execution count; regenerate with "
        "`python notebooks/make_notebooks.py` (or strip them) before committing"
    )


def test_tutorials_match_their_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path)]) == 0
    generated = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert generated == sorted(TUTORIALS)
    for name in TUTORIALS:
        assert (NOTEBOOKS / name).read_text() == (tmp_path / name).read_text(), (
            f"{name} differs from notebooks/src/{name[:-6]}.py: "
            "run python notebooks/make_notebooks.py"
        )


# ---------------------------------------------------------------------------- execution
def _execute(name: str) -> dict:
    """Run notebook ``name`` headless; return the JSON its last cell printed."""
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError naming the first failing cell
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    text = "".join(o.get("text", "") for o in last.outputs if o.get("output_type") == "stream")
    lines = [line for line in text.splitlines() if line.startswith("SUMMARY_JSON ")]
    assert lines, f"{name}: the last cell printed no SUMMARY_JSON line:\n{text[-2000:]}"
    return json.loads(lines[-1][len("SUMMARY_JSON "):])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_01_p_trace_derivation():
    s = _execute("01_p_trace_derivation.ipynb")
    # Every interval is [mean, low, high]: 95% Student-t over 10 independent replicates of 400
    # batches (paired: the methods share the batches), or over 8 random MDPs.
    assert s["replicates"] >= 5 and s["mdps"] >= 5
    n = len(s["drifts"])
    # With the trained trust regions, the P-trace preset's cosine to the exact gradient beats
    # GRPO's at every drift: the paired gain's lower end is above 0 (measured 0.013 on-policy,
    # 0.148 at s = 0.4, 0.085 at the largest drift), on the detailed MDP and over 8 others.
    for i in range(n):
        assert s["cos_gain_p_trace_minus_grpo"][i][1] > 0, (i, s["cos_gain_p_trace_minus_grpo"][i])
        assert s["cos_gain_over_mdps"][i][1] > 0, (i, s["cos_gain_over_mdps"][i])
    # Its bias is lower only once the clip is active (s >= 0.4); before that it is higher (the
    # on-policy positional bias of lam > 0).
    drop = s["bias2_drop_grpo_minus_p_trace"]
    assert drop[0][2] < 0 and drop[1][2] < 0, drop[:2]
    assert all(d[1] > 0 for d in drop[2:]), drop[2:]
    # lam sweep at s = 0.4: lam = 0.95 lowers the bias with the clip, raises it without.
    sweep = s["sweep_bias2_lam0_minus_lam095"]
    assert sweep["clip 0.2 / 0.28"][1] > 0 and sweep["trust region off"][2] < 0, sweep
    # GSPO with a 0.2 clip: below the P-trace preset while nothing is clipped, above it after.
    gspo = s["cos_gain_gspo02_minus_p_trace"]
    assert gspo[0][2] < 0 and gspo[1][2] < 0 and all(g[1] > 0 for g in gspo[2:]), gspo
    # At the largest drift both clipped token-level objectives point against grad J.
    assert s["cos_p_trace_preset"][-1][2] < 0 and s["cos_grpo_preset"][-1][2] < 0
    # Whole-answer importance sampling at the largest drift: bias^2 interval contains 0, below
    # GRPO's (paired), variance 2.47x [2.42, 2.52] GRPO's.
    is_bias = s["bias2_is_whole_bare_at_max_drift"]
    assert is_bias[1] < 0 < is_bias[2], is_bias
    assert s["bias2_grpo_minus_is_whole_bare_at_max_drift"][1] > 0
    assert s["var_is_whole_over_grpo_at_max_drift"][1] > 1.5
    # Exact enumeration (no sampling): the full product's variance dwarfs the token ratio's at
    # T = 10 (265x on the plotted draw, 8x to 675x over 6 random pairs of policies).
    assert s["exact_var_full_product_maxT"] > 10 * s["exact_var_token_ratio_maxT"]
    assert min(s["exact_var_full_over_token_maxT_draws"]) > 5
    # Section 5e, the trace forms. The weight form is GRPO on-policy (gain 0, variance ratio 1
    # exactly) and within 0.04 of GRPO's cosine at every drift, at a higher variance.
    gain_w = s["form_cos_gain_minus_grpo"]["P-trace weight (lam=0.95, w in [0, 2])"]
    var_w = s["form_var_over_grpo"]["P-trace weight (lam=0.95, w in [0, 2])"]
    assert gain_w[0] == [0.0, 0.0, 0.0] and var_w[0] == [1.0, 1.0, 1.0]
    assert all(abs(g[0]) < 0.04 for g in gain_w) and all(v[1] > 1.0 for v in var_w[1:])
    # The gate is the ratio form before anything is clipped, and below it (and below GRPO) once
    # tokens leave their own bounds (s >= 0.4).
    gate = s["form_cos_gain_gate_minus_p_trace"]
    assert gate[0] == [0.0, 0.0, 0.0] and all(g[2] < 0 for g in gate[2:]), gate
    gain_g = s["form_cos_gain_minus_grpo"]["P-trace gate (lam=0.95)"]
    assert all(g[2] < 0 for g in gain_g[2:]), gain_g


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_02_gspo_special_case():
    s = _execute("02_gspo_special_case.ipynb")
    assert s["max_abs_diff_gspo"] < 1e-10
    assert s["max_abs_diff_grpo"] < 1e-10
    assert s["credit_total_diff_p_trace_vs_grpo"] < 1e-12
    assert s["lam1_first_token_over_grpo"] == pytest.approx(s["harmonic_T"], abs=1e-9)
    assert s["lam1_last_token_over_grpo"] == pytest.approx(1 / 16, abs=1e-12)
    assert s["s_trace_max_unselected_credit"] == 0.0
    assert s["gspo_preset_whole_answers"]
    kept = s["kept_terms"]
    assert 0 < kept["GSPO (preset 3e-4/4e-4)"] < 320 and kept["GSPO (preset 3e-4/4e-4)"] % 40 == 0
    assert kept["P-trace (lam=0.95, 0.2/0.28)"] < 320
    credited = s["credited_tokens"]
    assert credited["P-trace (lam=0.95, 0.2/0.28)"] >= credited["GRPO (0.2/0.2)"]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_03_s_trace_entropy():
    s = _execute("03_s_trace_entropy.ipynb")
    for q, frac in s["select_frac"].items():
        assert abs(frac - float(q)) < 0.02, (q, frac)
    assert s["select_frac_max_abs_error"] < 0.02  # every pool, every q
    assert s["s_trace_max_unselected_credit"] == 0.0
    assert s["s_trace_selected_credit_share"] > 0.999
    # Every interval is [mean, low, high]: 95% Student-t over independent pools (each its own
    # problems, answers and resampled batches); A - B is paired (same pools, same batches).
    # Measured on the pinned policy, 16 pools x 20 batches, relative variance of the
    # output-layer gradient unless noted:
    assert s["pools"] >= 5
    d, c = s["rel_var_diff"], s["cos_to_pool_diff"]
    # P-trace above GRPO: +0.028 [+0.016, +0.040]; cosine -0.015 [-0.021, -0.009].
    assert d["P-trace - GRPO"][1] > 0 and c["P-trace - GRPO"][2] < 0
    # The preset's selection (q = 0.2) does NOT lower the trace's variance: vs the P-trace
    # +0.002 [-0.006, +0.010], cosine -0.002 [-0.007, +0.002]: no difference detectable.
    assert d["S-trace q=0.2 - P-trace"][1] < 0 < d["S-trace q=0.2 - P-trace"][2]
    assert c["S-trace q=0.2 - P-trace"][1] < 0 < c["S-trace q=0.2 - P-trace"][2]
    # ... and it stays above GRPO: +0.030 [+0.017, +0.043].
    assert d["S-trace q=0.2 - GRPO"][1] > 0
    # q = 0.1 is lower than the P-trace, -0.015 [-0.025, -0.005] (cosine +0.007 [+0.003,
    # +0.011]), still above GRPO, +0.013 [+0.004, +0.022].
    assert d["S-trace q=0.1 - P-trace"][2] < 0 and c["S-trace q=0.1 - P-trace"][1] > 0
    assert d["S-trace q=0.1 - GRPO"][1] > 0
    # q = 0.05 vs q = 0.2: +0.008 [-0.032, +0.049], no difference detectable ("too sparse" is
    # not shown).
    assert d["S-trace q=0.05 - S-trace q=0.2"][1] < 0 < d["S-trace q=0.05 - S-trace q=0.2"][2]
    # 80/20 GRPO is GRPO to within 0.002: -0.0003 [-0.0005, -0.0001].
    assert max(abs(x) for x in d["80/20 GRPO - GRPO"]) < 0.002


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_04_training_walkthrough():
    s = _execute("04_training_walkthrough.ipynb")
    for loss in ("grpo", "s_trace"):
        assert s["tags_present"][loss] == s["required_tags"], loss
        assert s["steps_logged"][loss] == 6
        assert len(s["eval_accuracy"][loss]) == 2  # start and end
    assert s["all_finite"]
    assert all(abs(f - 0.2) < 0.05 for f in s["select_frac_s_trace"])
    assert all(math.isfinite(r) and 0.0 <= r <= 1.0 for rs in s["rewards"].values() for r in rs)
    # Section 5: max_staleness=1 from a notebook cell: one version stale after the first step.
    assert s["async_staleness"] == [0.0, 1.0, 1.0]
    assert all(kl > s["async_behaviour_kl"][0] for kl in s["async_behaviour_kl"][1:])


@pytest.mark.timeout(600)
def test_05_credit_study():
    """Headless on the committed study (nothing trains): every grid run read, the curves
    recomputed from the runs equal the study's summary, both gradient checkpoints and the
    sweep present, and every comparison with GRPO printed."""
    s = _execute("05_credit_study.ipynb")
    assert s["grid_runs"] == 75 and s["regimes"] == ["on_policy", "off_policy", "stale"]
    assert s["recomputed_agree"] is True
    assert s["n_comparisons"] == 12  # 4 presets x 3 regimes
    assert s["grad_checkpoints"] == ["after GRPO", "warm start"]
    assert s["sweep_settings"] == 20  # 15 on-policy (lam x q) + 5 off-policy (lam)
    # the forms study: 5 methods x 3 regimes x 5 seeds at the tuned rates, 5 x 3 rates x 2
    # tuning seeds, every curve recomputed from the runs
    assert s["forms_grid_runs"] == 75 and s["forms_tuning_runs"] == 30
    assert s["forms_regimes"] == ["updates_2", "off_policy", "stale_token"]
    assert s["forms_recomputed_agree"] is True and s["forms_n_comparisons"] == 12
    assert set(s["forms_tuned_lr"]) == {"grpo", "p_trace@gate", "s_trace@gate", "p_trace@weight",
                                        "s_trace@weight"}
    assert [row[:2] for row in s["ratio_comparisons"]] == [
        ["off_policy", "p_trace@ratio"], ["off_policy", "s_trace@ratio"]]
    # the second task shape: 3 methods x 2 regimes x 5 seeds on its own task and policy
    assert s["long_task"] == "chain:decisive=5,filler=2" and s["long_grid_runs"] == 30
    assert s["long_recomputed_agree"] is True
    methods = ("p_trace@weight", "s_trace@weight")
    assert [row[:2] for row in s["long_comparisons"]] == [
        [reg, m] for reg in ("updates_2", "off_policy") for m in methods]
