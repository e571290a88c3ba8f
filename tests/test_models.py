"""Tests for medae.models: registry, networks, losses and coarse noise."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medae.errors import MedaeError
from medae.models import (
    AEOutput,
    apply_coarse_noise,
    autoencoder_loss,
    create_model,
    draw_coarse_noise_params,
    kl_divergence,
    list_models,
    model_config,
    reconstruction_loss,
)

SMALL = {
    2: {"shape": (2, 1, 32, 32), "channels": (8, 16, 32)},
    3: {"shape": (2, 1, 16, 16, 16), "channels": (4, 8, 16)},
}


def small_model(name: str, spatial_dims: int, **kwargs):
    cfg = SMALL[spatial_dims]
    kwargs.setdefault("in_shape", cfg["shape"][2:])
    return create_model(name, spatial_dims=spatial_dims, channels=cfg["channels"], **kwargs)


def check_train_step(model, x, **loss_kwargs) -> AEOutput:
    out = model(x)
    assert isinstance(out, AEOutput)
    assert out.recon.shape == x.shape
    loss, parts = autoencoder_loss(model, out, x, **loss_kwargs)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert set(parts) == {"recon", "kl", "l1", "total"}
    assert parts["total"] == pytest.approx(parts["recon"] + parts["kl"] + parts["l1"], rel=1e-5)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    nonzero = 0
    for name, p in params:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        nonzero += bool(p.grad.abs().sum() > 0)
    assert nonzero >= 0.9 * len(params)
    return out


AE_FAMILIES = ["ae", "dae", "sae", "vae"]  # the encoder/decoder autoencoders


def test_registry_lists_all_families():
    assert list_models() == ["ae", "dae", "dae_unet", "intensity", "sae", "vae"]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_trains(name, spatial_dims):
    """Every registered model: output shape = input shape, finite loss, gradients everywhere,
    and a latent code for export."""
    torch.manual_seed(0)
    cfg = SMALL[spatial_dims]
    model = create_model(name, spatial_dims=spatial_dims, channels=cfg["channels"],
                         in_shape=cfg["shape"][2:])
    assert model.spatial_dims == spatial_dims
    x = torch.rand(cfg["shape"])
    if model.family == "intensity":  # the baseline: nothing to learn, the input is the map
        assert not list(model.parameters())
        out = model(x)
        assert not out.recon.any() and out.recon.shape == x.shape
        return
    assert model.family in AE_FAMILIES
    out = check_train_step(model, x)
    assert out.z is not None and out.z.shape[0] == x.shape[0]
    odd = torch.rand(1, 1, *(n - 3 for n in cfg["shape"][2:]))  # sizes not a power of two
    if model.config.get("latent_size") is None:
        model.eval()
        with torch.no_grad():
            assert model(odd).recon.shape == odd.shape


@pytest.mark.parametrize("latent_size", [None, 16], ids=["spatial", "dense"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", AE_FAMILIES)
def test_forward_backward(name, spatial_dims, latent_size):
    torch.manual_seed(0)
    model = small_model(name, spatial_dims, latent_size=latent_size)
    assert model.family == name and model.spatial_dims == spatial_dims
    x = torch.rand(SMALL[spatial_dims]["shape"])
    out = check_train_step(model, x)
    b = x.shape[0]
    if latent_size is None:
        channels = SMALL[spatial_dims]["channels"][-1]
        assert out.z.shape == (b, channels, *(n // 8 for n in x.shape[2:]))
    else:
        assert out.z.shape == (b, latent_size)
    assert (out.mu is not None) == (name == "vae") and (out.logvar is not None) == (name == "vae")
    model.eval()
    with torch.no_grad():
        code = model.encode(x)
        assert model.decode(code).shape == x.shape
        expected = model(x).mu if name == "vae" else model(x).z
        assert torch.equal(code, expected)


@pytest.mark.parametrize(
    "options",
    [
        {"norm": "batch", "num_res_units": 2, "dropout": 0.1},
        {"norm": "group", "strides": [2, 1, 2]},
        {"norm": None, "act": "relu", "out_activation": "sigmoid"},
    ],
    ids=["batch-res-dropout", "group-strides", "nonorm-sigmoid"],
)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_options(options, spatial_dims):
    torch.manual_seed(0)
    model = small_model("vae", spatial_dims, latent_size=8, **options)
    x = torch.rand(SMALL[spatial_dims]["shape"])
    kind = "bce" if options.get("out_activation") == "sigmoid" else "mse"
    out = check_train_step(model, x, kind=kind, beta=1e-3)
    if kind == "bce":
        assert out.recon.min() >= 0 and out.recon.max() <= 1
        assert torch.allclose(out.recon, torch.sigmoid(out.logits))


def test_odd_input_size_is_padded_and_cropped():
    model = create_model("ae", channels=(4, 8), in_shape=(30, 27))
    assert model(torch.rand(1, 1, 30, 27)).recon.shape == (1, 1, 30, 27)
    dense = create_model("sae", channels=(4, 8), latent_size=4, in_shape=(30, 27))
    assert dense(torch.rand(1, 1, 30, 27)).recon.shape == (1, 1, 30, 27)
    with pytest.raises(MedaeError, match="in_shape"):
        dense(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("latent_size", [None, 8])
def test_vae_eval_deterministic_train_stochastic(latent_size):
    torch.manual_seed(0)
    model = small_model("vae", 2, latent_size=latent_size)
    x = torch.rand(SMALL[2]["shape"])
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.z, a.mu)
    model.train()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.equal(c.z, d.z) and not torch.equal(c.recon, d.recon)
    assert torch.allclose(c.mu, d.mu)


def test_kl_closed_form_and_beta():
    mu = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # per element 0.5 * (exp(lv) + mu^2 - 1 - lv); sample 1: 0.5 + 0.5 * (7 - ln 4); sample 2: 0
    expected = (0.5 + 0.5 * (7 - math.log(4.0))) / 2
    assert kl_divergence(mu, logvar).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)).item() == 0.0
    model = create_model("vae", channels=(4,), latent_size=2, in_shape=(4, 4))
    target = torch.zeros(2, 1, 4, 4)
    out = AEOutput(recon=target.clone(), z=mu, mu=mu, logvar=logvar, logits=target.clone())
    for beta in (1.0, 0.25):
        loss, parts = autoencoder_loss(model, out, target, beta=beta)
        assert parts["kl"] == pytest.approx(beta * expected, rel=1e-6)
        assert parts["recon"] == 0.0 and parts["l1"] == 0.0
        assert loss.item() == pytest.approx(beta * expected, rel=1e-6)


def test_sae_l1_part():
    torch.manual_seed(0)
    model = small_model("sae", 2)
    x = torch.rand(SMALL[2]["shape"])
    out = model(x)
    _, parts = autoencoder_loss(model, out, x, sparsity=0.01)
    expected_l1 = 0.01 * out.z.abs().mean().item()
    assert expected_l1 > 0
    assert parts["l1"] == pytest.approx(expected_l1, rel=1e-6)
    assert parts["kl"] == 0.0
    assert parts["recon"] == pytest.approx(((out.recon - x) ** 2).mean().item(), rel=1e-6)
    ae = small_model("ae", 2)
    assert autoencoder_loss(ae, ae(x), x, sparsity=0.01)[1]["l1"] == 0.0


def test_reconstruction_loss_mask_and_kinds():
    recon = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(recon)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert reconstruction_loss(recon, target, "mse", mask).item() == pytest.approx(8.5)
    assert reconstruction_loss(recon, target, "l1", mask).item() == pytest.approx(2.5)
    assert reconstruction_loss(recon, target, "mse").item() == pytest.approx(7.5)
    assert reconstruction_loss(recon, target, "l1", torch.zeros_like(mask)).item() == 0.0
    # a (B, 1, ...) mask broadcasts over channels
    two = torch.cat([recon, 2 * recon], dim=1)
    assert reconstruction_loss(two, torch.zeros_like(two), "l1", mask).item() == pytest.approx(3.75)
    p = torch.tensor([[[[0.5, 0.9], [0.2, 0.7]]]])
    t = torch.tensor([[[[1.0, 1.0], [0.0, 0.5]]]])
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    expected = (bce[0, 0, 0, 0] + bce[0, 0, 1, 1]).item() / 2
    assert reconstruction_loss(p, t, "bce", mask).item() == pytest.approx(expected, rel=1e-5)
    logits = torch.log(p / (1 - p))
    got = reconstruction_loss(logits, t, "bce", mask, logits=True).item()
    assert got == pytest.approx(expected, rel=1e-5)
    with pytest.raises(MedaeError, match="huber"):
        reconstruction_loss(p, t, "huber")


def test_bce_needs_sigmoid_model_and_losses_are_float32_under_autocast():
    torch.manual_seed(0)
    x = torch.rand(SMALL[2]["shape"])
    linear = small_model("ae", 2)
    with pytest.raises(MedaeError, match="sigmoid"):
        autoencoder_loss(linear, linear(x), x, kind="bce")
    model = small_model("vae", 2, latent_size=8, out_activation="sigmoid")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss, parts = autoencoder_loss(model, out, x, kind="bce", mask=(x > 0.5).float())
    assert loss.dtype == torch.float32 and math.isfinite(parts["total"])


def test_coarse_noise_deterministic_masked_coarse_and_scaled():
    params = draw_coarse_noise_params(torch.Generator().manual_seed(1), std=0.3, resolution=8)
    assert set(params) >= {"seed", "std", "resolution"}
    assert json.loads(json.dumps(params)) == params
    x = torch.zeros(4, 1, 64, 64)
    mask = torch.zeros_like(x)
    mask[..., 8:56, 4:60] = 1
    a, b = apply_coarse_noise(x, mask, params), apply_coarse_noise(x, mask, params)
    assert torch.equal(a, b)
    assert torch.all(a[mask == 0] == 0)
    other = draw_coarse_noise_params(torch.Generator().manual_seed(2), std=0.3, resolution=8)
    assert not torch.equal(apply_coarse_noise(x, mask, other), a)
    noise = apply_coarse_noise(x, None, params)
    for dim in (-1, -2):
        n = noise.shape[dim]
        first, second = noise.narrow(dim, 0, n - 1), noise.narrow(dim, 1, n - 1)
        corr = torch.corrcoef(torch.stack([first.flatten(), second.flatten()]))[0, 1]
        assert corr > 0.9
    assert a[mask == 1].std().item() == pytest.approx(0.3, rel=0.3)
    assert noise.std().item() == pytest.approx(0.3, rel=0.3)
    volume = apply_coarse_noise(torch.ones(2, 1, 24, 24, 24), None,
                                draw_coarse_noise_params(torch.Generator().manual_seed(3)))
    assert volume.shape == (2, 1, 24, 24, 24)
    assert (volume - 1).std().item() == pytest.approx(0.2, rel=0.3)


def test_dae_keeps_serialisable_noise_settings():
    model = create_model("dae", channels=(4,), noise_std=0.1, noise_resolution=8)
    assert model.noise.to_dict() == {"std": 0.1, "resolution": 8}
    params = model.noise.draw(torch.Generator().manual_seed(0))
    assert params["std"] == 0.1 and params["resolution"] == 8


@pytest.mark.parametrize(
    ("name", "kwargs", "key"),
    [
        ("transformer", {}, "transformer"),
        ("ae", {"latent_dim": 4}, "latent_dim"),
        ("dae", {"noise_sd": 0.1}, "noise_sd"),
        ("vae", {"spatial_dims": 4}, "spatial_dims"),
        ("sae", {"latent_size": 8}, "in_shape"),
        ("ae", {"norm": "layer"}, "norm"),
        ("dae", {"noise_std": -1.0}, "noise_std"),
    ],
)
def test_bad_names_and_kwargs_raise_medae_error(name, kwargs, key):
    with pytest.raises(MedaeError) as info:
        create_model(name, **kwargs)
    message = str(info.value)
    assert name in message and key in message and "\n" not in message


@pytest.mark.parametrize("name", list_models())
def test_config_round_trip_and_seeded_weights(name):
    kwargs = {"spatial_dims": 3, "channels": (4, 8), "in_shape": (8, 8, 8)}
    if name in AE_FAMILIES:
        kwargs["latent_size"] = 6
    torch.manual_seed(3)
    model = create_model(name, **kwargs)
    cfg = model_config(model)
    assert cfg["name"] == name and cfg["channels"] == [4, 8]
    cfg = json.loads(json.dumps(cfg))
    rebuilt = create_model(**cfg)
    assert model_config(rebuilt) == cfg
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    torch.manual_seed(3)
    again = create_model(name, **kwargs)
    pairs = zip(model.state_dict().items(), again.state_dict().items(), strict=True)
    for (k, v), (k2, v2) in pairs:
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(MedaeError):
        model_config(torch.nn.Linear(2, 2))
