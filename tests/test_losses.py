"""Losses: the PyTorch reference's values on the parity fixture, and masking of unknown labels / padding."""
from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from algrnet_jax import losses
from algrnet_jax.configs import get_config

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "jaanet_parity_bp4d" / "expected.npz"


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


def _fixture_batch(ref):
    b = ref["input"].shape[0]
    outputs = {
        "au_logprob": jnp.asarray(ref["train_au_logprob"].transpose(0, 2, 1)),          # [B, 2, n] -> [B, n, 2]
        "local_au_logprob": jnp.asarray(ref["train_local_au_logprob"].transpose(0, 2, 1)),
        "landmarks": jnp.asarray(ref["train_landmarks"].reshape(b, 49, 2)),
    }
    batch = {
        "labels": jnp.asarray(ref["au_labels"], jnp.int32),
        "landmarks": jnp.asarray(ref["gt_landmarks"].reshape(b, 49, 2)),
        "interocular": jnp.sqrt(jnp.asarray(ref["biocular"])),   # the fixture's biocular is squared
        "mask": jnp.ones((b,), jnp.float32),
    }
    return outputs, batch


def test_total_loss_matches_pytorch_reference(ref):
    outputs, batch = _fixture_batch(ref)
    loss, parts = losses.total_loss(outputs, batch, ref["au_weight"], get_config("jaanet", "tiny"))
    np.testing.assert_allclose(parts["loss_au"], ref["train_loss_au"], rtol=1e-5)
    np.testing.assert_allclose(parts["loss_local_au"], ref["train_loss_local_au"], rtol=1e-5)
    np.testing.assert_allclose(parts["loss_align"], ref["train_loss_land"], rtol=1e-5)
    np.testing.assert_allclose(loss, ref["train_loss_total"], rtol=1e-5)
    assert float(parts["loss"]) == float(loss)


def test_unknown_labels_and_padding_are_masked(ref):
    outputs, batch = _fixture_batch(ref)
    cfg = get_config("jaanet", "tiny")
    w = ref["au_weight"]
    # Example 1's label of AU 3 unknown == AU 3 computed on example 0 alone.
    labels = np.asarray(batch["labels"]).copy()
    labels[1, 3] = -1
    got = losses.au_loss(outputs["au_logprob"], jnp.asarray(labels), jnp.asarray(w), jnp.asarray(labels >= 0))
    one = losses.au_loss(outputs["au_logprob"][:1], batch["labels"][:1], jnp.asarray(w), jnp.ones((1, 12), bool))
    full = losses.au_loss(outputs["au_logprob"], batch["labels"], jnp.asarray(w), jnp.ones((2, 12), bool))
    per_one = [float(losses.au_loss(outputs["au_logprob"][:1, i:i + 1], batch["labels"][:1, i:i + 1],
                                    jnp.asarray(w[i:i + 1]), jnp.ones((1, 1), bool))) for i in range(12)]
    per_full = [float(losses.au_loss(outputs["au_logprob"][:, i:i + 1], batch["labels"][:, i:i + 1],
                                     jnp.asarray(w[i:i + 1]), jnp.ones((2, 1), bool))) for i in range(12)]
    expect = (sum(per_full) - per_full[3] + per_one[3]) / 12
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert abs(float(got) - float(full)) > 1e-6 and abs(float(one) - float(full)) > 1e-6
    # An AU with no known label drops out of the mean over AUs.
    labels[:, 5] = -1
    got = losses.au_loss(outputs["au_logprob"], jnp.asarray(labels), jnp.asarray(w), jnp.asarray(labels >= 0))
    expect = (sum(per_full) - per_full[3] - per_full[5] + per_one[3]) / 11
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    # A padded row (mask 0, garbage content) changes nothing.
    pad = lambda a, v: jnp.concatenate([a, jnp.full((1,) + a.shape[1:], v, a.dtype)])
    padded_out = {k: pad(v, -3.0 if "logprob" in k else 7.0) for k, v in outputs.items()}
    padded = {"labels": pad(batch["labels"], 1), "landmarks": pad(batch["landmarks"], 0.0),
              "interocular": pad(batch["interocular"], 0.0), "mask": jnp.array([1.0, 1.0, 0.0])}
    base, base_parts = losses.total_loss(outputs, batch, w, cfg)
    loss, parts = losses.total_loss(padded_out, padded, w, cfg)
    assert np.isfinite(float(loss))
    for k in base_parts:
        np.testing.assert_allclose(parts[k], base_parts[k], rtol=1e-6)


def test_paralysis_loss_is_class_weighted_cross_entropy():
    cfg = get_config("algrnet_paralysis", "tiny")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    logprob = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    grades = np.array([0, 3, 2, -1, 1])
    mask = np.array([1, 1, 1, 1, 0], np.float32)
    cw = np.array([0.5, 1.0, 1.5, 2.0], np.float32)
    keep = (grades >= 0) & (mask > 0)
    nll = -logprob[np.arange(5), np.clip(grades, 0, 3)]
    expect = (cw[grades[keep]] * nll[keep]).sum() / cw[grades[keep]].sum()
    import torch  # the same as torch.nn.functional.nll_loss with class weights
    t = torch.nn.functional.nll_loss(torch.from_numpy(logprob[keep]), torch.from_numpy(grades[keep]),
                                     weight=torch.from_numpy(cw))
    np.testing.assert_allclose(expect, t.item(), rtol=1e-6)
    outputs = {"grade_logprob": jnp.asarray(logprob), "local_grade_logprob": jnp.asarray(logprob[:, ::-1]),
               "landmarks": jnp.zeros((5, 49, 2))}
    batch = {"labels": jnp.asarray(grades), "landmarks": jnp.ones((5, 49, 2)), "interocular": jnp.full((5,), 7.0),
             "mask": jnp.asarray(mask)}
    loss, parts = losses.total_loss(outputs, batch, cw, cfg)
    np.testing.assert_allclose(parts["loss_au"], expect, rtol=1e-6)
    np.testing.assert_allclose(parts["loss_align"], 98 / (2 * 49.0), rtol=1e-6)
    np.testing.assert_allclose(loss, parts["loss_au"] + parts["loss_local_au"] + 0.5 * parts["loss_align"], rtol=1e-6)
