"""Training-sample augmentation: replayable draws, and the in-plane rotation and zoom."""

import numpy as np
import pytest

from medae.errors import MedaeError
from medae.samples import Augment


def _disc(n=41, r=10):
    x, y = np.mgrid[:n, :n] - (n - 1) / 2
    return (x * x + y * y) <= r * r


def test_draws_replay_and_old_recipes_are_unchanged():
    old = Augment(flip_lr=True, intensity_scale=0.05)
    new = Augment(flip_lr=True, intensity_scale=0.05, rotate_deg=10, zoom=0.1)
    for seed in range(20):
        a, b = old.draw(seed), new.draw(seed)
        # the older draws come first: a recipe without rotation replays exactly as before
        assert set(a) == {"flip_lr", "scale", "shift"}
        assert {k: b[k] for k in a} == a
        assert -10 <= b["angle"] <= 10 and 0.9 <= b["zoom"] <= 1.1
        assert new.draw(seed) == b
    angles = [new.draw(s)["angle"] for s in range(200)]
    assert min(angles) < -8 and max(angles) > 8  # spread over the range, not a constant


def test_quarter_turn_is_a_rot90_and_the_mask_follows():
    rng = np.random.default_rng(0)
    image = rng.random((2, 21, 21, 3)).astype(np.float32)  # channels, a 3D patch
    mask = np.zeros((21, 21, 3), bool)
    mask[2:9, 4:6] = True
    params = {"flip_lr": False, "scale": 1.0, "shift": 0.0, "angle": 90.0, "zoom": 1.0}
    out, kept = Augment.apply(image, mask, params)
    # every axial slice and every channel turns the same way, values carried exactly
    np.testing.assert_allclose(out, np.rot90(image, k=1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_array_equal(kept, np.rot90(mask, k=1, axes=(0, 1)))
    assert kept.dtype == bool and out.dtype == np.float32


def test_zoom_scales_areas_and_keeps_the_centre():
    disc = _disc()
    image = disc[None].astype(np.float32)
    params = {"flip_lr": False, "scale": 1.0, "shift": 0.0, "angle": 0.0, "zoom": 1.2}
    out, kept = Augment.apply(image, disc, params)
    assert kept.sum() / disc.sum() == pytest.approx(1.44, rel=0.05)
    assert out[0].sum() / image.sum() == pytest.approx(1.44, rel=0.05)
    where, value = np.argwhere(out[0] > 0), out[0][out[0] > 0]
    centre = (where * value[:, None]).sum(axis=0) / value.sum()
    assert tuple(centre) == pytest.approx((20, 20), abs=0.01)  # linear: exact about the centre
    assert tuple(np.argwhere(kept).mean(axis=0)) == pytest.approx((20, 20), abs=0.1)
    # a rotation keeps a centred disc where it is
    params.update(angle=33.0, zoom=1.0)
    _, turned = Augment.apply(image, disc, params)
    assert turned.sum() == pytest.approx(disc.sum(), rel=0.03)
    assert tuple(np.argwhere(turned).mean(axis=0)) == pytest.approx((20, 20), abs=0.1)


@pytest.mark.parametrize("values, word", [
    ({"rotate_deg": -5}, "rotate_deg"), ({"zoom": 0.9}, "zoom"), ({"zoom": "a"}, "zoom"),
    ({"rotate_deg": True}, "rotate_deg"), ({"spin": 1}, "spin"), ({"flip_lr": "no"}, "flip_lr")])
def test_bad_settings_are_refused_by_name(values, word):
    with pytest.raises(MedaeError, match=word):
        Augment.from_dict(values)



def test_dataset_samples_are_the_plain_ones_turned_by_their_own_draw():
    from types import SimpleNamespace

    from medae.samples import SampleDataset, sample_seed

    rng = np.random.default_rng(1)
    mask = np.zeros((20, 24, 6), bool)
    mask[4:16, 5:20] = True
    image = (rng.random((1, 20, 24, 6)) * mask).astype(np.float32)
    items = [{"prepared": SimpleNamespace(image=image, mask=mask, label=None), "case_id": "c"}]
    aug = Augment(rotate_deg=20, zoom=0.1)
    plain = SampleDataset(items, 2, seed=3)
    turned = SampleDataset(items, 2, seed=3, augment=aug)
    turned.set_epoch(2)
    assert len(plain) == len(turned) == 6
    for i in range(len(plain)):
        params = aug.draw(sample_seed(3, 2, i))
        want, want_mask = Augment.apply(plain[i]["image"].numpy(), plain[i]["mask"].numpy()[0] > 0,
                                        params)
        np.testing.assert_allclose(turned[i]["image"].numpy(), want, atol=1e-6)
        np.testing.assert_array_equal(turned[i]["mask"].numpy()[0] > 0, want_mask)
        assert not np.allclose(want, plain[i]["image"].numpy())  # the draw changed the sample
