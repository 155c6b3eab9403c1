"""The local-head diagnostics (experiments/diagnose_heads.py) and the report's flag on heads not above the
all-present predictor (experiments/report.py, printed by the main job)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax import configs, evaluation
from algrnet_jax.models.relations import init_skip_direction, skip_direction
from experiments import diagnose_heads, report


def _result(local_f1, trivial_f1, aus=("AU1", "AU2", "AU4")):
    preds = {"local": {"f1": list(local_f1)}, "integrated": {"f1": [80.0] * len(aus)},
             "final": {"f1": [80.0] * len(aus)}, evaluation.TRIVIAL: {"f1": list(trivial_f1)}}
    return {"aus": list(aus), "predictions": preds}


def test_report_flags_every_head_at_or_below_the_all_present_f1():
    weak = report.heads_not_above_trivial(_result([1.9, 40.0, 30.0], [30.0, 30.0, 30.0]))
    assert weak == [("local", "AU1", 1.9, 30.0), ("local", "AU4", 30.0, 30.0)]    # equal counts as not above
    message = report.weak_heads_message(weak)
    assert "local AU1 F1 1.9 <= 30.0" in message and "local AU4 F1 30.0 <= 30.0" in message
    assert report.heads_not_above_trivial(_result([31.0, 40.0, 30.1], [30.0, 30.0, 30.0])) == []
    assert report.weak_heads_message([]) == ""


def test_written_report_says_plainly_which_heads_are_not_above(tmp_path):
    result = _result([0.0, 70.0, 60.0], [30.0, 30.0, 30.0])
    result.update(frames=30, mean_f1=80.0, landmarks={"mean_error_pct": 3.0, "failure_rate_pct": 0.0},
                  task="au", dataset="synth_au", builder_config="bp4d_small", label_set="bp4d", fold=1, model="algrnet")
    for key, p in result["predictions"].items():
        p.update(mean_f1=float(np.mean(p["f1"])), accuracy=[50.0] * 3, mean_accuracy=50.0)
    text = report.write_report(tmp_path / "rep", result, metrics_jsonl=None).read_text()
    assert "**Warning: per-AU heads NOT above the all-present predictor: local AU1 F1 0.0 <= 30.0" in text
    result["predictions"]["local"]["f1"] = [40.0, 70.0, 60.0]
    text = report.write_report(tmp_path / "rep2", result, metrics_jsonl=None).read_text()
    assert "Warning" not in text and "Every per-AU head" in text


def test_skip_gates_follow_the_skip_step_formula_and_mask_non_sources():
    n, b, c, f = 3, 2, 4, 4
    params = init_skip_direction(jax.random.PRNGKey(0), n, c, f)
    v = jax.random.normal(jax.random.PRNGKey(1), (n, b, 3, 3, c))
    for reverse in (False, True):
        gates = np.asarray(diagnose_heads.skip_gates(params, v, reverse))
        assert gates.shape == (n, n, b, f)
        sources = [(t, j) for t in range(n) for j in range(n) if (j > t if reverse else j < t)]
        assert np.isnan(gates).sum() == (n * n - len(sources)) * b * f
        h = np.asarray(skip_direction(params, v, reverse))
        t, j = sources[-1]
        x = np.concatenate([h[j].mean((1, 2)), np.asarray(v[t]).mean((1, 2))], -1)       # [B, F + C]
        want = 1 / (1 + np.exp(-(x @ np.asarray(params["gates"]["kernel"][j, 0, 0]) + np.asarray(params["gates"]["bias"][j]))))
        np.testing.assert_allclose(gates[t, j], want, rtol=1e-5, atol=1e-6)


def test_module_norms_are_per_au_for_the_per_au_modules():
    tree = {"local_au_output": {"k": jnp.stack([jnp.full((2, 2), 1.0), jnp.full((2, 2), 2.0)])},
            "au_output": {"k": jnp.full((3,), 2.0)}}
    norms = diagnose_heads.module_norms(tree, 2)
    assert norms["local_au_output"] == pytest.approx([2.0, 4.0]) and norms["au_output"] == pytest.approx(np.sqrt(12))


@pytest.mark.slow      # compiles a tiny ALGRNet's train step and the probe: about 60 s of CPU
def test_diagnose_probes_the_local_branch_of_a_tiny_algrnet(tmp_path):
    from experiments import main_job

    config = main_job.job_config(main_job.QUICK, data_dir=str(tmp_path / "tfds"))
    main_job.ensure_dataset(config)
    result = diagnose_heads.diagnose(config, probe_every=1, progress=False)
    probe = result["probes"][-1]
    n = len(config.aus)
    for key in ("grad_head_input", "grad_l", "rms_l", "rms_head_input", "alpha_mean", "local_p_present"):
        assert len(probe[key]) == n, key
    assert 0.0 < probe["skip_gate_mean_forward"] < 1.0 and 0.0 <= probe["skip_gate_low_backward"] <= 1.0
    assert len(probe["effective_lr"]["local_au_output"]) == n and probe["effective_lr"]["au_output"] > 0
    assert all(g > 0 for g in probe["grad_norm"]["local_au_output"])
    assert "| ||dL/dr_t|| (local head input) |" in diagnose_heads.markdown(result)


def test_main_job_feeds_its_local_heads_the_rescaled_fusion_refine_output():
    """The main job's model with the paper's unit-norm F&R output ends with local heads at or below the all-present
    F1 (docs/ablation_synthetic.md, "Dead local heads"); the job turns on the rescaled output, and keeps every other
    part of the ``algrnet`` config (which stays the paper's reading)."""
    from experiments import main_job

    for settings in (main_job.MAIN_JOB, main_job.QUICK):
        config = main_job.job_config(settings, data_dir="/nonexistent")
        assert config.model.fusion_refine and config.model.fusion_refine_rescale
        paper = configs.get_config("algrnet", settings["size"], settings["label_set"])
        assert not paper.model.fusion_refine_rescale
        for key in ("arch", "adaptive", "relation", "fusion_refine", "unit", "lstm_hidden", "map_scale"):
            assert config.model[key] == paper.model[key], key
