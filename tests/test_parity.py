"""Parity with the PyTorch JAA-Net reference (fixture ``jaanet_parity_bp4d``, docs/model.md §10).

The fixture's weights are rebuilt from ``recipe.json``, saved as the six release ``.pth`` files, converted
with ``algrnet convert-jaanet`` and run. Targets: eval outputs within 1e-4 absolute (initial maps exact),
one training step with our loss and optimizer: losses within 1e-5 relative. Post-step sums of every entry
are held only for the PyTorch baseline run unchanged: in float32 they are chaotic (an input change of 1e-7
moves them by up to 7%, test below). Our float32 step's per-entry update norms are compared with the float64
reference step (``jaanet_train_step64_bp4d``) within tolerances measured on the reference code itself; the
exact one-step check is float64: ``algrnet check-step`` (tests/test_check_step.py).
"""
import argparse
import pathlib

import numpy as np
import pytest

from algrnet_jax.errors import UserError
from algrnet_jax.reference import recipe

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "jaanet_parity_bp4d"
EVAL_KEYS = ("landmarks", "initial_au_maps", "refined_au_maps", "au_prob", "local_au_prob", "au_logprob",
             "local_au_logprob")
LOSSES = {"total": "loss", "au": "loss_au", "local_au": "loss_local_au", "land": "loss_align"}


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURE / "expected.npz"))


@pytest.fixture(scope="module")
def release():
    return recipe.rebuild_state_dicts(recipe.load_recipe(FIXTURE / "recipe.json"))


def _run_command(module, argv):
    """Runs an ``algrnet`` subcommand module as the CLI does (parser from ``add_arguments``)."""
    import importlib

    mod = importlib.import_module(f"algrnet_jax.commands.{module}")
    parser = argparse.ArgumentParser(prog=module)
    mod.add_arguments(parser)
    return mod.run(parser.parse_args(argv))


def _assert_eval_outputs(got, expected, prefix="eval_"):
    for k in EVAL_KEYS:
        want = expected[prefix + k]
        assert got[k].shape == want.shape, k
        if k == "initial_au_maps":
            np.testing.assert_array_equal(got[k], want, err_msg=k)
        else:
            np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-4, err_msg=k)


def _assert_after_step(state_dicts, expected):
    """Sum and sum of squares of every release state_dict entry after one step, 1e-4 relative (the withdrawn
    criterion; kept to show that it is chaotic in float32)."""
    flat = {f"{m}.{k}": np.asarray(v, np.float64) for m, sd in state_dicts.items() for k, v in sd.items()}
    names = [str(n) for n in expected["after_step_names"]]
    assert sorted(names) == sorted(flat)
    bad = []
    for name, s, q in zip(names, expected["after_step_sum"], expected["after_step_sumsq"]):
        a = flat[name]
        for label, got, want in (("sum", a.sum(), s), ("sumsq", np.square(a).sum(), q)):
            if abs(got - want) > 1e-4 * abs(want):
                bad.append(f"{name} {label}: {got!r} vs {want!r}")
    assert not bad, f"{len(bad)} post-step entries differ:\n" + "\n".join(bad[:30])


STEP64 = pathlib.Path(__file__).parent / "fixtures" / "jaanet_train_step64_bp4d" / "train_step64.npz"


def _assert_update_norms_match_float64_reference(after, release):
    """Per state_dict entry (1820), the norm of a float32 step's update d = after - before against the float64
    reference step. Measured relative errors, ours / the PyTorch baseline in float32: all entries
    together 6.9e-8 / 4.9e-8; median 2.6e-5 / 3.0e-5; 99th percentile 4.0e-3 / 4.1e-3; max 1.7e-2 / 0.31 (single
    entries are chaotic in float32: conv biases before BatchNorm have ~0 gradient). Post-step SUMS are not
    compared: in float32 they move by up to 7% when the input changes by 1e-7, and with the CPU's kernels."""
    ref = dict(np.load(STEP64))
    names = [str(n) for n in ref["update_names"]]
    norm = np.array([np.linalg.norm(np.asarray(after[m][k], np.float64) - np.asarray(release[m][k], np.float64))
                     for m, k in (n.split(".", 1) for n in names)])
    norm_ref = np.sqrt(ref["update_sumsq"])
    rel = np.abs(norm - norm_ref) / norm_ref
    total = abs(np.linalg.norm(norm) - np.linalg.norm(norm_ref)) / np.linalg.norm(norm_ref)
    worst = ", ".join(f"{names[i]} {rel[i]:.2g}" for i in np.argsort(-rel)[:5])
    assert total < 1e-6, total
    assert np.median(rel) < 1e-4 and np.quantile(rel, 0.99) < 1e-2, (np.median(rel), np.quantile(rel, 0.99), worst)


@pytest.mark.torch
def test_torch_baseline_reproduces_the_reference(release, expected):
    """Our PyTorch JAA-Net (release keys) reproduces eval outputs, losses and one SGD step (update norms)."""
    torch = pytest.importorskip("torch")
    from algrnet_jax.reference import torch_jaanet

    torch.set_num_threads(2)
    model = torch_jaanet.TorchJAANet()
    model.load_release(release)
    model.eval()
    x = torch.from_numpy(expected["input"])
    with torch.no_grad():
        out = {k: v.numpy() for k, v in model(x).items()}
    _assert_eval_outputs(out, expected)

    t = {k: torch.from_numpy(expected[k]) for k in ("au_labels", "gt_landmarks", "biocular", "au_weight")}
    step = torch_jaanet.train_step(model, torch_jaanet.make_sgd(model), x, t["au_labels"], t["gt_landmarks"],
                                   t["biocular"], t["au_weight"])
    for k in ("landmarks", "initial_au_maps", "local_au_logprob", "au_logprob"):
        np.testing.assert_allclose(step[k].numpy(), expected["train_" + k], rtol=0, atol=1e-4, err_msg=k)
    for k in LOSSES:
        np.testing.assert_allclose(step["loss_" + k].item(), expected["train_loss_" + k], rtol=1e-5, err_msg=k)
    _assert_update_norms_match_float64_reference(
        {m: {k: v.numpy() for k, v in sd.items()} for m, sd in model.release_state_dicts().items()}, release)


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    """The fixture weights as .pth files, converted with ``algrnet convert-jaanet``: (ckpt dir, tmp dir)."""
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("jaanet")
    recipe.save_pth(release, tmp / "release", epoch=4)
    ckpt = tmp / "ckpt"
    assert _run_command("convert_jaanet", ["--torch-dir", str(tmp / "release"), "--epoch", "4", "--au-num", "12",
                                           "--out", str(ckpt)]) == 0
    return ckpt, tmp


@pytest.mark.torch
def test_converted_checkpoint_reproduces_reference_eval_through_run_arrays(converted, expected):
    """convert-jaanet -> run-arrays on the fixture's NCHW input (and the same faces NHWC)."""
    ckpt, tmp = converted
    np.save(tmp / "faces_nchw.npy", expected["input"])
    np.save(tmp / "faces_nhwc.npy", expected["input"].transpose(0, 2, 3, 1))
    assert _run_command("run_arrays", ["--checkpoint", str(ckpt), "--input", str(tmp / "faces_nchw.npy"),
                                       "--out", str(tmp / "out_nchw.npz")]) == 0
    out = dict(np.load(tmp / "out_nchw.npz"))
    _assert_eval_outputs(out, expected)
    assert out["final_au_prob"].shape == (2, 12)
    np.testing.assert_array_equal(out["final_au_prob"], out["au_prob"])  # JAA-Net: final = integrated
    assert _run_command("run_arrays", ["--checkpoint", str(ckpt), "--input", str(tmp / "faces_nhwc.npy"),
                                       "--layout", "nhwc", "--batch-size", "1",
                                       "--out", str(tmp / "out_nhwc.npz")]) == 0
    out_nhwc = dict(np.load(tmp / "out_nhwc.npz"))
    for k in EVAL_KEYS:
        np.testing.assert_allclose(out_nhwc[k], out[k], rtol=0, atol=1e-5, err_msg=k)
    with pytest.raises(UserError, match="ambiguous|wants 176x176"):
        np.save(tmp / "bad.npy", np.zeros((1, 3, 64, 64), np.float32))
        _run_command("run_arrays", ["--checkpoint", str(ckpt), "--input", str(tmp / "bad.npy"),
                                    "--out", str(tmp / "bad.npz")])


@pytest.mark.torch
def test_reference_post_step_sums_are_input_sensitive(release, expected):
    """Why the post-step-sum target cannot be met by any non-bit-identical float32 implementation:
    the reference code itself misses it on hundreds of entries (unperturbed too on some CPUs: the sums also
    move with the kernels the CPU runs), by up to several percent, when its input moves by 1e-7 (ReLU / max-pool decisions flip and
    the per-tensor sums of the cell and branch gradients cancel)."""
    torch = pytest.importorskip("torch")
    from algrnet_jax.reference import torch_jaanet

    torch.set_num_threads(2)
    model = torch_jaanet.TorchJAANet()
    model.load_release(release)
    noise = np.random.default_rng(0).standard_normal(expected["input"].shape).astype(np.float32)
    x = torch.from_numpy(expected["input"] + np.float32(1e-7) * noise)
    t = {k: torch.from_numpy(expected[k]) for k in ("au_labels", "gt_landmarks", "biocular", "au_weight")}
    torch_jaanet.train_step(model, torch_jaanet.make_sgd(model), x, t["au_labels"], t["gt_landmarks"],
                            t["biocular"], t["au_weight"])
    with pytest.raises(AssertionError) as err:
        _assert_after_step({m: {k: v.numpy() for k, v in sd.items()}
                            for m, sd in model.release_state_dicts().items()}, expected)
    assert int(str(err.value).split(" post-step")[0].split()[-1]) > 100


@pytest.fixture(scope="module")
def jax_step(converted, expected):
    """One step of our train step (losses.total_loss, optim.make_optimizer) on the fixture batch:
    (config, new state, metrics, train-mode outputs in the release layout)."""
    import jax
    import jax.numpy as jnp

    from algrnet_jax.reference import step_parity
    from algrnet_jax.inference import torch_layout
    from algrnet_jax.checkpoints import load_for_inference

    config, variables = load_for_inference(converted[0])
    outputs, metrics, new_state = step_parity.one_step(config, variables,
                                                       step_parity.fixture_batch(expected, jnp.float32),
                                                       jnp.asarray(expected["au_weight"]))
    return config, new_state, metrics, torch_layout(jax.tree.map(np.asarray, outputs))


@pytest.mark.slow
@pytest.mark.torch
def test_one_training_step_outputs_and_losses_match_the_reference(jax_step, expected):
    """Train-mode outputs (batch statistics, maps from the train-mode landmarks) and every loss term."""
    _, _, metrics, out = jax_step
    for k in ("landmarks", "initial_au_maps", "local_au_logprob", "au_logprob"):
        if k == "initial_au_maps":
            np.testing.assert_array_equal(out[k], expected["train_" + k], err_msg=k)
        else:
            np.testing.assert_allclose(out[k], expected["train_" + k], rtol=0, atol=1e-4, err_msg=k)
    for ref, ours in LOSSES.items():
        np.testing.assert_allclose(float(metrics[ours]), expected["train_loss_" + ref], rtol=1e-5, err_msg=ours)


@pytest.mark.slow
@pytest.mark.torch
def test_one_float32_training_step_update_norms_match_the_float64_reference(jax_step, release):
    """Our float32 step's per-entry update norms against the float64 reference step (tolerances above)."""
    import jax

    from algrnet_jax.interop import convert

    config, new_state, _, _ = jax_step
    _assert_update_norms_match_float64_reference(
        convert.flax_to_state_dicts(jax.tree.map(np.asarray, new_state.variables()), config), release)
