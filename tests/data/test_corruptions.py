"""The CIFAR-10-C corruptions (`data.corruptions`): each operation checked against the library the
reference code uses (scipy, OpenCV, an HSV round trip), determinism, and the CIFAR-10-C reader's
refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarkit.data import corruptions as C
from cifarkit.errors import ConfigError, DataError

scipy_ndimage = pytest.importorskip("scipy.ndimage")


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth-ish uint8 images (random noise would hide blur errors at the borders)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (n, 3, 8, 8), generator=g).float()
    return torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear").round().to(torch.uint8)


@pytest.mark.parametrize("mode", ["nearest", "reflect"])
@pytest.mark.parametrize("sigma,truncate,size", [(0.4, 4.0, 32), (1.0, 4.0, 32), (6.4, 3.0, 32), (10.0, 3.0, 8)])
def test_gaussian_filter_is_scipys(mode, sigma, truncate, size):
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    ours = C.gaussian_filter(x, sigma, mode, truncate).numpy()
    ref = scipy_ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode=mode, truncate=truncate)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("factor", [1.0, 1.07, 1.25, 1.75, 2.25])
def test_clipped_zoom_is_scipys_zoom(factor):
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    ch = int(np.ceil(32 / factor))
    top = (32 - ch) // 2
    for i in range(2):
        img = x[i].permute(1, 2, 0).numpy()
        z = scipy_ndimage.zoom(img[top:top + ch, top:top + ch], (factor, factor, 1), order=1)
        trim = (z.shape[0] - 32) // 2
        ref = z[trim:trim + 32, trim:trim + 32]
        ours = C._clipped_zoom(x, factor)[i].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-9)


@pytest.mark.parametrize("severity", [2, 4])
def test_elastic_transform_is_opencvs_warp_then_scipys_map_coordinates(severity):
    cv2 = pytest.importorskip("cv2")
    x = images(3).float() / 255
    ours = C.elastic_transform(x, severity, np.random.default_rng(7)).numpy()
    alpha, sigma, shift = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                           (0.1, 0.03, 0.03)][severity - 1]
    rng = np.random.default_rng(7)  # the same draws, in the same order
    src = np.float32([[26, 26], [26, 6], [6, 6]])
    dst = src[None] + rng.uniform(-32 * shift, 32 * shift, (3, 3, 2))
    noise = rng.uniform(-1, 1, (3, 2, 32, 32)).astype(np.float32)
    for i in range(3):
        img = x[i].permute(1, 2, 0).numpy().astype(np.float32)
        m = cv2.getAffineTransform(src, dst[i].astype(np.float32))
        img = cv2.warpAffine(img, m, (32, 32), borderMode=cv2.BORDER_REFLECT_101)
        dx = scipy_ndimage.gaussian_filter(noise[i, 0].astype(np.float64), 32 * sigma, mode="reflect", truncate=3)
        dy = scipy_ndimage.gaussian_filter(noise[i, 1].astype(np.float64), 32 * sigma, mode="reflect", truncate=3)
        xx, yy = np.meshgrid(np.arange(32), np.arange(32))
        ref = np.stack([scipy_ndimage.map_coordinates(img[..., c], [yy + dy * 32 * alpha, xx + dx * 32 * alpha],
                                                      order=1, mode="reflect") for c in range(3)])
        np.testing.assert_allclose(ours[i], ref, atol=2e-3)  # float32 grids vs OpenCV's fixed-point warp


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_defocus_blur_is_opencvs_disk_filter(severity):
    cv2 = pytest.importorskip("cv2")
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    t = np.arange(-8, 9)
    xx, yy = np.meshgrid(t, t)
    disk = np.array((xx ** 2 + yy ** 2) <= radius ** 2, dtype=np.float32)
    disk /= disk.sum()
    kernel = cv2.GaussianBlur(disk, ksize=(3, 3), sigmaX=alias)
    x = images(2).float() / 255
    ours = C.defocus_blur(x, severity, np.random.default_rng(0)).numpy()
    for i in range(2):
        img = x[i].permute(1, 2, 0).numpy()
        ref = np.stack([cv2.filter2D(img[..., c], -1, kernel) for c in range(3)])
        np.testing.assert_allclose(ours[i], ref, atol=1e-5)


@pytest.mark.parametrize("name,channel,severity", [("brightness", 2, 3), ("saturate", 1, 1), ("saturate", 1, 5)])
def test_brightness_and_saturate_are_an_hsv_round_trip(name, channel, severity):
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    x = images(4).float() / 255
    x[0, :, :4, :4] = 0.5  # grey pixels: hue undefined (0 = red by convention)
    x[0, :, 4:8, :4] = 0.0  # black pixels: saturation undefined (0)
    ours = getattr(C, name)(x, severity, np.random.default_rng(0)).numpy()
    hsv = rgb_to_hsv(x.permute(0, 2, 3, 1).numpy().astype(np.float64))
    if name == "brightness":
        hsv[..., 2] = np.clip(hsv[..., 2] + [.05, .1, .15, .2, .3][severity - 1], 0, 1)
    else:
        a, b = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
        hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
    ref = hsv_to_rgb(hsv).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("severity", [1, 5])
def test_glass_blur_moves_pixels_as_the_reference_loop_does(severity):
    """The reference's loop, run literally on numpy (its tuple assignment of two views copies one way)."""
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = images(2, seed=3).float() / 255
    ours = C.glass_blur(x, severity, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    arr = C._quantise(C.gaussian_filter(x, sigma)).permute(0, 2, 3, 1).numpy().copy()  # (B, H, W, 3)
    order = [(r, q) for r in range(32 - delta, delta, -1) for q in range(32 - delta, delta, -1)]
    for _ in range(iterations):
        d = rng.integers(-delta, delta, size=(len(order), 2, 2))  # the draws ours makes, in its order
        for i in range(2):
            img = arr[i]
            for j, (r, q) in enumerate(order):
                dx, dy = d[j, 0, i], d[j, 1, i]
                img[r, q], img[r + dy, q + dx] = img[r + dy, q + dx], img[r, q]
    ref = C.gaussian_filter(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255, sigma)
    torch.testing.assert_close(ours, ref)
    assert (ours - x).abs().mean() < 0.08  # a local jitter, not pixels dragged across the image


def test_motion_blur_follows_the_angle():
    stripes = torch.zeros(1, 3, 32, 32)
    stripes[:, :, ::4] = 1.0  # horizontal lines: constant along x
    flat = C._motion_blur(stripes, 6, 2, np.array([0.0]))  # angle 0: streaks along x only
    torch.testing.assert_close(flat, stripes)
    steep = C._motion_blur(stripes, 6, 2, np.array([90.0]))  # along y: the lines smear
    assert (steep - stripes).abs().max() > 0.2
    const = torch.full((2, 3, 32, 32), 0.3)
    torch.testing.assert_close(C._motion_blur(const, 9, 2.5, np.array([17.0, -40.0])), const)


@pytest.mark.parametrize("name", list(C.FUNCTIONS))
def test_every_corruption_is_uint8_deterministic_and_stronger_at_5(name):
    if name == "spatter":
        pytest.importorskip("cv2")
    x = images(6)
    a = C.corrupt(x, name, 1, C.chunk_rng(0, name, 1, 0))
    b = C.corrupt(x, name, 1, C.chunk_rng(0, name, 1, 0))
    e = C.corrupt(x, name, 5, C.chunk_rng(0, name, 5, 0))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)  # the same seed: the same images, bit for bit
    assert (e.float() - x.float()).abs().mean() > 0.5  # severity 5 visibly changes every kind
    if name in ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "fog", "brightness",
                "contrast", "jpeg_compression", "pixelate", "speckle_noise", "gaussian_blur", "motion_blur"):
        assert (e.float() - x.float()).abs().mean() > (a.float() - x.float()).abs().mean()


def test_chunks_and_seeds_draw_different_noise():
    x = images(4)
    first = C.corrupt(x, "gaussian_noise", 3, C.chunk_rng(0, "gaussian_noise", 3, 0))
    assert not torch.equal(first, C.corrupt(x, "gaussian_noise", 3, C.chunk_rng(0, "gaussian_noise", 3, 1)))
    assert not torch.equal(first, C.corrupt(x, "gaussian_noise", 3, C.chunk_rng(1, "gaussian_noise", 3, 0)))


def test_bad_names_severities_and_sizes():
    with pytest.raises(ConfigError, match="unknown corruption"):
        C.check_corruptions(["gausian_noise"])
    assert C.check_corruptions(["elastic", "jpeg", "jpeg_compression"]) == ["elastic_transform", "jpeg_compression"]
    assert len(C.check_corruptions(None)) == 15 and len(C.check_corruptions(None, extra=True)) == 19
    for s in (0, 6):
        with pytest.raises(ConfigError, match="severities run from 1"):
            C.check_severities([s])
    with pytest.raises(ConfigError, match="32 x 32"):
        C.corrupt(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "fog", 1, np.random.default_rng(0))


def write_cifar10c(root, names=("fog",), n=50_000, label_dtype=np.uint8):
    """A CIFAR-10-C folder of the real shapes, mostly sparse zeros (fast to write)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        arr = np.lib.format.open_memmap(root / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(n, 32, 32, 3))
        arr[:20] = 200
        arr.flush()
        del arr
    lab = np.lib.format.open_memmap(root / "labels.npy", mode="w+", dtype=label_dtype, shape=(n,))
    lab[:] = np.arange(n) % 10
    lab.flush()
    del lab
    return root


def test_read_cifar10c_folder(tmp_path):
    root = write_cifar10c(tmp_path / "c10c")
    imgs, labels = C.read_cifar10c(root, "fog")
    batch = C.cifar10c_batch(imgs, 1, np.arange(20))
    assert batch.shape == (20, 3, 32, 32) and int(batch.min()) == 200
    assert int(labels[13]) == 3


def test_read_cifar10c_refusals(tmp_path):
    root = write_cifar10c(tmp_path / "c10c")
    with pytest.raises(DataError, match="snow.npy: missing"):
        C.read_cifar10c(root, "snow")
    with pytest.raises(DataError, match="not a folder"):
        C.read_cifar10c(tmp_path / "nowhere", "fog")
    short = write_cifar10c(tmp_path / "short", n=10_000)  # one severity only
    with pytest.raises(DataError, match="expected"):
        C.read_cifar10c(short, "fog")
    cut = write_cifar10c(tmp_path / "cut")
    with open(cut / "fog.npy", "r+b") as f:  # a partial download
        f.truncate(1_000_000)
    with pytest.raises(DataError, match="too short"):
        C.read_cifar10c(cut, "fog")
    pickled = tmp_path / "pickled"
    write_cifar10c(pickled)
    np.save(pickled / "labels.npy", np.array([object()] * 50_000), allow_pickle=True)
    with pytest.raises(DataError, match="not a plain"):
        C.read_cifar10c(pickled, "fog")
    garbage = write_cifar10c(tmp_path / "garbage")
    (garbage / "fog.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="not a .npy array file"):
        C.read_cifar10c(garbage, "fog")
    nearly = write_cifar10c(tmp_path / "nearly")  # short by less than its header: the data check counts it
    size = (nearly / "fog.npy").stat().st_size
    with open(nearly / "fog.npy", "r+b") as f:
        f.truncate(size - 64)
    with pytest.raises(DataError, match="too short"):
        C.read_cifar10c(nearly, "fog")
    shuffled = write_cifar10c(tmp_path / "shuffled")
    lab = np.load(shuffled / "labels.npy")
    lab[20_000:20_010] = lab[20_000:20_010][::-1]  # severity 3 no longer repeats severity 1's labels
    np.save(shuffled / "labels.npy", lab)
    with pytest.raises(DataError, match="do not repeat"):
        C.read_cifar10c(shuffled, "fog")
    lab[:] = np.arange(50_000) % 10
    lab[45_000] = 200  # out of range in severity 5 only
    np.save(shuffled / "labels.npy", lab)
    with pytest.raises(DataError, match="outside 0-9"):
        C.read_cifar10c(shuffled, "fog")
    outside = write_cifar10c(tmp_path / "outside")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "fog.npy").symlink_to(outside / "fog.npy")
    (linked / "labels.npy").symlink_to(outside / "labels.npy")
    with pytest.raises(DataError, match="not a regular file inside"):
        C.read_cifar10c(linked, "fog")
