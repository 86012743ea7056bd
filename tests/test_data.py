"""Tests of onceforall.data: dataset readers, batched augmentation, the tensor loader and splits."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from onceforall.data import (
    ImageFolder,
    TensorLoader,
    center_resize,
    find_classes,
    holdout_split,
    load_cifar,
    load_dataset,
    load_fashion_mnist,
    normalize,
    random_flip,
    random_resized_crop,
    read_idx,
)
from onceforall.data.augment import crop_boxes, resized_crop
from onceforall.data.fashion_mnist import DEFAULT_ROOT
from onceforall.errors import DataError

# ---------------------------------------------------------------- Fashion-MNIST IDX files


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def fake_fashion_mnist(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    """A Fashion-MNIST folder mixing plain and gzipped files."""
    rng = np.random.default_rng(0)
    root.mkdir(exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(root / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return root


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_read_idx_round_trips_plain_and_gzip(tmp_path, name):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / name, array))
    assert out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, array)


def test_read_idx_rejects_bad_magic_and_wrong_size(tmp_path):
    bad_type = tmp_path / "float"
    bad_type.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(DataError, match="magic"):
        read_idx(bad_type)
    truncated = write_idx(tmp_path / "short", np.zeros((4, 28, 28), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(DataError, match="bytes"):
        read_idx(truncated)
    garbage_gz = tmp_path / "bad.gz"
    garbage_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(garbage_gz)


def test_load_fashion_mnist_from_folder(tmp_path):
    root = fake_fashion_mnist(tmp_path / "fm")
    images, labels = load_fashion_mnist(root, "train")
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2, 3, 4, 5] and labels.dtype == torch.int64
    images, labels = load_fashion_mnist(root, "test")
    assert images.shape == (4, 1, 28, 28) and labels.shape == (4,)


def test_load_fashion_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    root = fake_fashion_mnist(tmp_path / "fm")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        load_fashion_mnist(root, "test")
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(3))  # 3 labels for 4 images
    with pytest.raises(DataError, match="same split"):
        load_fashion_mnist(root, "test")
    with pytest.raises(DataError, match="split"):
        load_fashion_mnist(root, "val")


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_loads():
    info = load_dataset("fashion-mnist")
    assert info.train_images.shape == (60000, 1, 28, 28) and info.train_images.dtype == torch.uint8
    assert info.test_images.shape == (10000, 1, 28, 28)
    assert info.train_labels.bincount().tolist() == [6000] * 10
    assert info.test_labels.bincount().tolist() == [1000] * 10
    assert info.n_classes == 10 and info.in_channels == 1 and info.image_size == 28
    pixels = info.train_images.float() / 255
    assert pixels.mean().item() == pytest.approx(info.mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(info.std[0], abs=1e-3)


# ---------------------------------------------------------------- CIFAR pickles


def write_batch(path: Path, data: np.ndarray, labels: list[int], label_key: bytes) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", b"data": data, label_key: labels}, f, protocol=2)


def fake_cifar10(root: Path, per_batch: int = 2) -> Path:
    root.mkdir(parents=True)
    for i in range(1, 6):
        data = np.full((per_batch, 3072), i, np.uint8)
        data[:, 1024:2048] = 100 + i  # green plane
        write_batch(root / f"data_batch_{i}", data, [i] * per_batch, b"labels")
    write_batch(root / "test_batch", np.zeros((3, 3072), np.uint8), [0, 9, 3], b"labels")
    return root


def test_load_cifar10_batches(tmp_path):
    root = fake_cifar10(tmp_path / "cifar-10-batches-py")
    for given in (root, tmp_path):  # the batches folder or the folder holding it
        images, labels = load_cifar(given, 10, "train")
        assert images.shape == (10, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and labels.dtype == torch.int64
        assert images[4, 0].unique().tolist() == [3] and images[4, 1].unique().tolist() == [103]
    images, labels = load_cifar(root, 10, "test")
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 9, 3]
    info = load_dataset("cifar10", root=tmp_path)
    assert (info.n_classes, info.in_channels, info.image_size, len(info.mean)) == (10, 3, 32, 3)
    assert info.train_images.shape[0] == 10 and info.test_labels.tolist() == [0, 9, 3]


def test_load_cifar100_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    write_batch(root / "train", np.zeros((4, 3072), np.uint8), [0, 50, 99, 7], b"fine_labels")
    write_batch(root / "test", np.zeros((2, 3072), np.uint8), [1, 2], b"fine_labels")
    info = load_dataset("cifar100", root=tmp_path)
    assert info.train_labels.tolist() == [0, 50, 99, 7] and info.test_images.shape == (2, 3, 32, 32)
    assert info.n_classes == 100


def test_load_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar(tmp_path, 10)
    root = fake_cifar10(tmp_path / "c10")
    write_batch(root / "test_batch", np.zeros((3, 3072), np.uint8), [0, 10, 3], b"labels")
    with pytest.raises(DataError, match="labels span"):
        load_cifar(root, 10, "test")
    write_batch(root / "test_batch", np.zeros((3, 3072), np.uint8), [0, 1, 2], b"fine_labels")
    with pytest.raises(DataError, match="keys"):
        load_cifar(root, 10, "test")
    (root / "test_batch").write_bytes(pickle.dumps(print))  # a global no CIFAR batch needs
    with pytest.raises(DataError, match="refusing"):
        load_cifar(root, 10, "test")
    with pytest.raises(DataError, match="10 or 100"):
        load_cifar(root, 20)
    with pytest.raises(DataError, match="root="):
        load_dataset("cifar10")


# ---------------------------------------------------------------- ImageFolder


def fake_image_tree(root: Path) -> Path:
    """root/{train,val}/<class>/*.png of solid colours, one colour per class."""
    colours = {"zebra": (255, 0, 0), "ant": (0, 255, 0), "cat": (0, 0, 255)}
    for split, n in (("train", 3), ("val", 1)):
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 7 * i, 30), colour).save(folder / f"{i}.png")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_train_and_eval(tmp_path):
    root = fake_image_tree(tmp_path / "imgs")
    train = ImageFolder(root / "train", size=16, train=True)
    assert train.classes == ["ant", "cat", "zebra"]
    assert len(train) == 9 and train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    torch.manual_seed(0)
    image, label = train[8]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == 2
    assert image[0].min() > 250 and image[1:].max() < 5  # still red after crop and flip
    val = ImageFolder(root / "val", size=20, train=False, classes=train.classes)
    image, label = val[1]
    assert image.shape == (3, 20, 20) and label == 1
    assert image[2].min() > 250 and image[:2].max() < 5
    batch, labels = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 0, 1]


def test_image_folder_crop_is_seeded_and_eval_crops_the_centre(tmp_path):
    folder = tmp_path / "one" / "stripes"
    folder.mkdir(parents=True)
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :, 0] = np.arange(60, dtype=np.uint8)[None, :] * 4  # red ramps left to right
    Image.fromarray(pixels).save(folder / "ramp.png")
    train = ImageFolder(tmp_path / "one", size=16, train=True)
    torch.manual_seed(1)
    first = train[0][0]
    torch.manual_seed(1)
    assert torch.equal(first, train[0][0])
    image = ImageFolder(tmp_path / "one", size=16, train=False)[0][0].float()
    # shorter side 40 -> ceil(16 / 0.875) = 19, longer 60 -> 28; the centre 16 columns of 28 are kept
    assert image[0].mean(0).diff().gt(0).all()  # the ramp survives (no flip in eval)
    assert image[0].mean().item() == pytest.approx(118, abs=6)  # centred on the middle of the ramp


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing", 8, train=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        find_classes(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolder(tmp_path / "empty", 8, train=False)
    root = fake_image_tree(tmp_path / "imgs")
    with pytest.raises(DataError, match="not in the class list"):
        ImageFolder(root / "val", 8, train=False, classes=["ant", "cat"])


def test_load_dataset_image_folder_path(tmp_path):
    root = fake_image_tree(tmp_path / "tiny-imagenet")
    info = load_dataset(root)
    assert not info.in_memory
    assert info.classes == ("ant", "cat", "zebra") and info.n_classes == 3 and info.in_channels == 3
    assert info.train_dir == root / "train" and info.test_dir == root / "val"
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    with pytest.raises(DataError, match="train/ and val/"):
        load_dataset(root / "train")


def test_load_dataset_names(tmp_path):
    root = fake_fashion_mnist(tmp_path / "fm")
    info = load_dataset("fashion_mnist", root=root)
    assert info.in_memory and info.name == "fashion-mnist"
    assert info.train_images.shape == (6, 1, 28, 28) and info.test_labels.shape == (4,)
    assert (info.n_classes, info.in_channels, info.image_size) == (10, 1, 28)
    with pytest.raises(DataError, match=r"cifar100.*fashion-mnist"):
        load_dataset("imagenet-but-not-a-folder")


# ---------------------------------------------------------------- augmentation


def test_augment_shapes_and_dtypes():
    images = torch.randint(0, 256, (5, 3, 20, 24), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = random_resized_crop(images, 16, generator=g)
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert random_flip(images, generator=g).dtype == torch.uint8
    resized = center_resize(images, 12)
    assert resized.shape == (5, 3, 12, 12) and resized.dtype == torch.float32
    assert normalize(images, (0.5,) * 3, (0.25,) * 3).dtype == torch.float32


@pytest.mark.parametrize("size", [12, 20, 37])
def test_full_crop_equals_plain_resize(size):
    images = torch.rand(3, 2, 20, 20)
    g = torch.Generator().manual_seed(3)
    out = random_resized_crop(images, size, scale=(1, 1), ratio=(1, 1), generator=g)
    expected = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(center_resize(images, size), expected, atol=1e-5, rtol=0)


def test_resized_crop_samples_the_box():
    images = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[2.0, 3.0, 8.0, 10.0], [0.0, 0.0, 16.0, 16.0]])  # (top, left, h, w)
    out = resized_crop(images, boxes, 5)  # shrinking, so every sample point lies inside the box
    expected0 = F.interpolate(images[:1, :, 2:10, 3:13], size=(5, 5), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:1], expected0, atol=1e-5, rtol=0)
    expected1 = F.interpolate(images[1:], size=(5, 5), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[1:], expected1, atol=1e-5, rtol=0)


def test_crop_boxes_fit_and_follow_scale():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(500, 30, 40, scale=(0.35, 1.0), generator=g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 30).all() and (left + w <= 40).all()
    assert (h >= 1).all() and (w >= 1).all() and torch.equal(boxes, boxes.round())
    area = h * w / (30 * 40)
    assert area.min() > 0.3 and area.max() <= 1.0 and area.std() > 0.1
    aspect = w / h
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    with pytest.raises(DataError, match="scale"):
        crop_boxes(1, 8, 8, scale=(0.5, 0.2))


def test_flip_flips():
    images = torch.arange(2 * 1 * 2 * 3).reshape(2, 1, 2, 3)
    assert torch.equal(random_flip(images, p=1.0), images.flip(-1))
    assert torch.equal(random_flip(images, p=0.0), images)
    many = torch.arange(400).view(400, 1, 1, 1).expand(400, 1, 1, 2) * torch.tensor([1, -1])
    flipped = random_flip(many, generator=torch.Generator().manual_seed(0))[..., 0] < 0
    assert 150 < flipped.sum() < 250


def test_augment_is_deterministic_per_seed():
    images = torch.rand(4, 3, 24, 24)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return random_flip(random_resized_crop(images, 16, generator=g), generator=g)

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_normalize_and_center_resize():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(images, (0.5, 0.0, 1.0), (0.5, 1.0, 2.0))
    assert out[:, 0].eq(1.0).all() and out[:, 1].eq(1.0).all() and out[:, 2].eq(0.0).all()
    with pytest.raises(DataError, match="channels"):
        normalize(images, (0.5,), (0.5,))
    wide = torch.zeros(1, 1, 4, 8)
    wide[..., 2:6] = 1.0  # the central square is all ones
    assert center_resize(wide, 4).eq(1.0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_augment_on_cuda_matches_cpu():
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    cpu = random_resized_crop(images, 16, generator=torch.Generator().manual_seed(0))
    gpu = random_resized_crop(images.cuda(), 16, generator=torch.Generator().manual_seed(0))
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- TensorLoader


def make_loader(n: int = 50, batch_size: int = 8, **kwargs) -> TensorLoader:
    """Images whose labels are their sample ids, so batches can be traced back to samples."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    return TensorLoader(images, torch.arange(n), batch_size, (0.5,), (0.25,), **kwargs)


def epoch(loader: TensorLoader, index: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(index, start)
    return list(loader)


def sample_ids(loader: TensorLoader, index: int) -> torch.Tensor:
    """The sample ids of one epoch, in the order the loader yields them."""
    return torch.cat([labels for _, labels in epoch(loader, index)])


def test_loader_batch_counts():
    assert len(make_loader(train=True)) == 6  # drop_last by default when training
    assert len(make_loader(train=False)) == 7
    assert len(make_loader(batch_size=4, world_size=2, train=True)) == 6
    batches = epoch(make_loader(train=True), 0)
    assert len(batches) == 6 and all(labels.shape == (8,) for _, labels in batches)
    assert [len(labels) for _, labels in epoch(make_loader(train=False), 0)] == [8] * 6 + [2]


def test_loader_sees_every_sample_once_and_shuffles_per_epoch():
    loader = make_loader(train=True, drop_last=False)
    seen = [sample_ids(loader, e) for e in range(3)]
    for order in seen:
        assert sorted(order.tolist()) == list(range(50))
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert torch.equal(sample_ids(make_loader(train=True, drop_last=False), 1), seen[1])
    assert not torch.equal(sample_ids(make_loader(train=True, drop_last=False, seed=1), 1), seen[1])
    assert sample_ids(make_loader(train=False), 4).tolist() == list(range(50))


def test_loader_eval_output_is_normalized_pixels():
    loader = make_loader(train=False, memory_format=torch.channels_last)
    images, labels = next(iter(loader))
    expected = (loader.images[labels].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(images, expected)
    assert images.dtype == torch.float32 and images.is_contiguous(memory_format=torch.channels_last)


def test_loader_elastic_resolution_is_deterministic():
    resolutions = [8, 12, 16]
    loader = make_loader(train=True, resolutions=resolutions, seed=7)
    sizes = [images.shape[-1] for images, _ in epoch(loader, 2)]
    assert all(images.shape[-2] == images.shape[-1] for images, _ in epoch(loader, 2))
    assert sizes == [loader.resolution_at(2, b) for b in range(len(loader))]
    assert set(sizes) <= set(resolutions) and len(set(sizes)) > 1
    fresh = make_loader(train=True, resolutions=resolutions, seed=7)
    assert sizes == [images.shape[-1] for images, _ in epoch(fresh, 2)]
    across = {loader.resolution_at(e, b) for e in range(5) for b in range(6)}
    assert across == set(resolutions)
    eval_sizes = {images.shape[-1] for images, _ in epoch(make_loader(train=False, resolutions=[20]), 0)}
    assert eval_sizes == {20}


def test_loader_resumes_mid_epoch_exactly():
    full = epoch(make_loader(train=True, resolutions=[8, 10, 12]), 3)
    resumed = epoch(make_loader(train=True, resolutions=[8, 10, 12]), 3, start=2)
    assert len(resumed) == len(full) - 2
    for (a, la), (b, lb) in zip(full[2:], resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert epoch(make_loader(train=True), 3, start=6) == []
    with pytest.raises(DataError, match="start_batch"):
        make_loader(train=True).set_epoch(0, 7)


@pytest.mark.parametrize("train", [True, False])
def test_loader_shards_match_one_process(train):
    single = epoch(make_loader(batch_size=8, train=train, resolutions=[8, 12]), 1)
    ranks = [
        make_loader(batch_size=4, train=train, resolutions=[8, 12], rank=r, world_size=2) for r in range(2)
    ]
    shards = [epoch(loader, 1) for loader in ranks]
    assert len(shards[0]) == len(shards[1]) == len(single)
    covered = []
    for (images, labels), *parts in zip(single, *shards, strict=True):
        for r, (shard_images, shard_labels) in enumerate(parts):
            assert torch.equal(shard_labels, labels[r::2])
            torch.testing.assert_close(shard_images, images[r::2])
            covered += shard_labels.tolist()
    assert sorted(covered) == sorted(torch.cat([labels for _, labels in single]).tolist())
    assert set(shards[0][0][1].tolist()).isdisjoint(shards[1][0][1].tolist())


@pytest.mark.parametrize("train", [True, False])
def test_loader_short_last_batch_leaves_late_ranks_empty(train):
    # 50 samples in global batches of 16: the last holds 2, so ranks 2 and 3 get empty batches
    ranks = [make_loader(batch_size=4, train=train, drop_last=False, rank=r, world_size=4) for r in range(4)]
    last = [epoch(loader, 0)[-1] for loader in ranks]
    assert [len(labels) for _, labels in last] == [1, 1, 0, 0]
    assert last[3][0].shape == (0, 1, 12, 12) and all(len(epoch(loader, 0)) == 4 for loader in ranks)


def test_loader_rejects_bad_input():
    with pytest.raises(DataError, match="uint8"):
        TensorLoader(torch.rand(4, 1, 8, 8), torch.arange(4), 2, (0.5,), (0.5,))
    with pytest.raises(DataError, match="labels"):
        TensorLoader(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(3), 2, (0.5,), (0.5,))
    with pytest.raises(DataError, match="rank"):
        make_loader(rank=2, world_size=2)
    with pytest.raises(DataError, match="no full global batch"):
        make_loader(n=6, batch_size=8, train=True)
    with pytest.raises(DataError, match="resolutions"):
        make_loader(resolutions=[])


# ---------------------------------------------------------------- holdout split


def test_holdout_split():
    train, held = holdout_split(100, 10, seed=2147483647)
    assert len(held) == 10 and len(train) == 90
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(100))
    again_train, again_held = holdout_split(100, 10, seed=2147483647)
    assert torch.equal(train, again_train) and torch.equal(held, again_held)
    assert not torch.equal(holdout_split(100, 10, seed=1)[1], held)
    assert held.tolist() != list(range(10))  # shuffled, not the first samples
    with pytest.raises(DataError, match="holdout"):
        holdout_split(10, 10)
