"""``algrnet check-step``: one float64 training step against a PyTorch reference step.

A tiny fixture of the shared one's form (crop 64, unit 1, 8 AUs, batch 2) is written by our PyTorch baseline
(``reference/torch_jaanet``) in float64. Fast: the criteria, report and exit codes, with the step's result
replaced by the PyTorch one (a perturbed reference fails with exit 1; a bad folder or no torch exits 2).
Slow (XLA compiles the float64 train step for 3-4 min on the 2-core machine, at any model size): our JAX step
on the tiny fixture and on the shared fixture of the public PyTorch JAA-Net (paper size, 12 AUs).
"""
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest

from algrnet_jax import au_sets, cli
from algrnet_jax.reference import recipe, step_parity

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SHARED_STEP = FIXTURES / "jaanet_train_step64_bp4d"


def write_tiny_fixture(folder: pathlib.Path, crop: int = 64, unit: int = 1, batch: int = 2, tag: str = "tiny"):
    """A fixture of the shared one's form from our PyTorch baseline, run in float64 (8 DISFA AUs).

    Returns the PyTorch step as ``step_parity._reference_step`` returns ours: (outputs, losses, updates).
    """
    import torch

    from algrnet_jax.reference import torch_jaanet

    aus = au_sets.AU_SETS["disfa"]
    model = torch_jaanet.TorchJAANet(aus, crop_size=crop, unit_dim=unit).double()
    modules = {m: [[k, list(v.shape)] for k, v in sd.items()] for m, sd in model.release_state_dicts().items()}
    mean_shape = np.asarray(recipe.load_recipe(SHARED_STEP / "recipe.json")["mean_shape"]) * (crop / 176)
    rec = {"tag": tag, "au_num": len(aus), "mean_shape": mean_shape.tolist(), "modules": modules}
    model.load_release(recipe.rebuild_state_dicts(rec, np.float64))
    before = {f"{m}.{k}": v.detach().clone().numpy() for m, sd in model.release_state_dicts().items()
              for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    rng = np.random.default_rng(0)
    arrays = {"input": rng.uniform(-1, 1, (batch, 3, crop, crop)), "au_labels": rng.integers(0, 2, (batch, len(aus))),
              "gt_landmarks": mean_shape + rng.normal(0, 1, (batch, 98)),
              "biocular": rng.uniform(0.8, 1.2, batch) * (0.3 * crop) ** 2,
              "au_weight": rng.uniform(0.5, 1.5, len(aus))}
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    out = torch_jaanet.train_step(model, torch_jaanet.make_sgd(model), t["input"], t["au_labels"], t["gt_landmarks"],
                                  t["biocular"], t["au_weight"])
    for k in ("landmarks", "initial_au_maps", "au_logprob", "local_au_logprob"):
        arrays["train_" + k] = out[k].numpy()
    for k in ("total", "au", "local_au", "land"):
        arrays["train_loss_" + k] = out["loss_" + k].numpy()
    after = {f"{m}.{k}": v.numpy() for m, sd in model.release_state_dicts().items() for k, v in sd.items()}
    names = list(before)
    d = [after[n] - before[n] for n in names]
    r = [step_parity.projection_vector(tag, n, x.shape) for n, x in zip(names, d)]
    arrays.update(update_names=np.array(names), update_sum=np.array([x.sum() for x in d]),
                  update_sumsq=np.array([np.square(x).sum() for x in d]),
                  update_proj=np.array([np.sum(x * v) for x, v in zip(d, r)]),
                  proj_norm=np.array([np.linalg.norm(v) for v in r]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.json").write_text(json.dumps(rec))
    np.savez(folder / "train_step64.npz", **arrays)
    outputs = {k: arrays["train_" + k] for k in step_parity.OUTPUT_KEYS}
    losses = {k: float(arrays["train_loss_" + k]) for k in step_parity.LOSS_KEYS}
    return outputs, losses, dict(zip(names, d))


@pytest.fixture(scope="module")
def tiny_and_torch_step(tmp_path_factory):
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("step") / "tiny"
    return folder, write_tiny_fixture(folder)


@pytest.fixture(scope="module")
def tiny(tiny_and_torch_step):
    return tiny_and_torch_step[0]


@pytest.mark.torch
def test_check_step_criteria_report_and_exit_codes(tiny_and_torch_step, tmp_path, monkeypatch, capsys):
    """With the PyTorch step in place of ours: passes (0); a perturbed loss and update norm fail (1)."""
    tiny, torch_step = tiny_and_torch_step
    monkeypatch.setattr(step_parity, "_reference_step", lambda rec, arrays: torch_step)
    assert cli.main(["check-step", str(tiny), "--json", str(tmp_path / "report.json"), "--top", "3"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"outputs", "losses", "update_norm", "update_proj"}
    assert all(c["passed"] for c in report.values())
    assert report["update_norm"]["compared"] == len(np.load(tiny / "train_step64.npz")["update_names"])
    assert all(len(c["worst"]) == min(3, c["compared"]) for c in report.values())
    out = capsys.readouterr().out
    assert "all criteria hold" in out and "update_proj: PASS" in out

    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    arrays = dict(np.load(bad / "train_step64.npz"))
    arrays["train_loss_au"] = arrays["train_loss_au"] * (1 + 1e-7)
    i = int(np.argmax(arrays["update_sumsq"]))
    arrays["update_sumsq"][i] *= 1 + 1e-5           # norm off by 5e-6 relative: over 1e-6
    np.savez(bad / "train_step64.npz", **arrays)
    assert cli.main(["check-step", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "losses: FAIL (4 compared, 1 over the limit" in out
    assert "update_norm: FAIL (" in out and str(arrays["update_names"][i]) in out
    assert "update_proj: PASS" in out and "FAIL: losses, update_norm" in out


@pytest.mark.slow
@pytest.mark.torch
def test_check_step_our_float64_step_on_the_tiny_fixture(tiny, tmp_path):
    """Our JAX step in float64 against our PyTorch baseline in float64 (AU count, crop, unit from the folder)."""
    assert cli.main(["check-step", str(tiny)]) == 0   # (a non-float64 variable after the step raises)


@pytest.mark.torch
def test_check_step_user_errors_exit_2(tiny, tmp_path, monkeypatch, capsys):
    assert cli.main(["check-step", str(tmp_path / "nowhere")]) == 2
    assert "no such fixture folder" in capsys.readouterr().err
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny / "recipe.json", partial)
    assert cli.main(["check-step", str(partial)]) == 2
    assert "train_step64.npz: missing" in capsys.readouterr().err
    arrays = dict(np.load(tiny / "train_step64.npz"))
    del arrays["update_proj"]
    np.savez(partial / "train_step64.npz", **arrays)
    assert cli.main(["check-step", str(partial)]) == 2
    assert "missing arrays ['update_proj']" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torch", None)    # import torch -> ImportError
    assert cli.main(["check-step", str(tiny)]) == 2
    assert "needs the torch extra" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.torch
def test_check_step_on_the_public_pytorch_reference_fixture(tmp_path):
    """The shared fixture (public PyTorch JAA-Net run in float64, paper size, 12 AUs, batch 2): every
    criterion of its README holds (measured worst: see docs/usage_interop.md)."""
    pytest.importorskip("torch")
    assert cli.main(["check-step", str(SHARED_STEP), "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["update_norm"]["compared"] == 1820
    assert all(c["passed"] for c in report.values())
