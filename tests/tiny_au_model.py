"""A stand-in AU network for fast training-loop tests: same inputs, outputs and ``batch_stats`` as
``models.networks.ALGRNet`` but one conv + BatchNorm, so it compiles in seconds on a busy CPU.
The real networks are exercised by the model tests and the slow training tests."""
import flax.linen as nn
import jax
import jax.numpy as jnp


class TinyAUNet(nn.Module):
    """images [B, C, C, 3] -> landmarks [B, 49, 2], AU log-probabilities [B, n, 2], probabilities [B, n]."""

    num_aus: int
    crop_size: int

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        b, n = images.shape[0], self.num_aus
        x = nn.Conv(8, (3, 3), strides=(2, 2), name="conv")(images)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        landmarks = nn.Dense(98, name="align")(x).reshape(b, 49, 2) + self.crop_size / 2
        au = jax.nn.log_softmax(nn.Dense(2 * n, name="au")(x).reshape(b, n, 2), axis=-1)
        local = jax.nn.log_softmax(nn.Dense(2 * n, name="local")(x).reshape(b, n, 2), axis=-1)
        au_prob, local_prob = jnp.exp(au[..., 1]), jnp.exp(local[..., 1])
        return {"landmarks": landmarks, "au_logprob": au, "local_au_logprob": local, "au_prob": au_prob,
                "local_au_prob": local_prob, "final_au_prob": (au_prob + local_prob) / 2}


def tiny_model(config) -> TinyAUNet:
    return TinyAUNet(num_aus=len(config.aus), crop_size=config.crop_size)


def tiny_checkpoint(directory, name: str):
    """An inference checkpoint of :class:`TinyAUNet` under ``directory`` with the tiny config ``name``:
    (path, config, model, variables)."""
    from algrnet_jax import configs
    from algrnet_jax.checkpoints import save_inference_checkpoint

    config = configs.get_config(name, "tiny")
    model = tiny_model(config)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, config.crop_size, config.crop_size, 3)),
                           train=False)
    return save_inference_checkpoint(directory / "tiny", config, variables), config, model, variables
