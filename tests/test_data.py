import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from kdpipe.core.config import DataConfig
from kdpipe.core.errors import DataError
from kdpipe.data.prepared import (
    MEAN,
    STD,
    Normalize,
    Prepared,
    augment,
    batch_order,
    prepare,
    to_device,
)
from kdpipe.data.sources import balanced_subset, read_image_folder
from tests.conftest import random_images


def png_bytes(seed: int, size: int = 32) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def make_archive(path, entries: dict[str, bytes | None]):
    """A .tar.gz holding `entries` (name -> bytes, or None for a folder)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def image_folder(classes=("cat", "dog"), per_class=3, prefix=""):
    entries = {}
    for split in ("train", "test"):
        for c, cls in enumerate(classes):
            entries[f"{prefix}{split}/{cls}/"] = None
            for i in range(per_class):
                entries[f"{prefix}{split}/{cls}/{i:04d}.png"] = png_bytes(100 * c + i)
    return entries


def test_archive_is_read_in_class_order_with_pixels_intact(tmp_path):
    archive = make_archive(tmp_path / "set.tar.gz", image_folder(prefix="cifar/"))
    splits, classes = read_image_folder(archive)
    assert classes == ["cat", "dog"]
    assert splits["train"].images.shape == (6, 3, 32, 32)
    assert splits["train"].labels.tolist() == [0, 0, 0, 1, 1, 1]
    first = np.asarray(Image.open(io.BytesIO(png_bytes(0))))
    assert np.array_equal(splits["train"].images[0], first.transpose(2, 0, 1))


def test_folder_and_archive_give_the_same_arrays(tmp_path):
    entries = image_folder()
    archive = make_archive(tmp_path / "set.tar.gz", entries)
    folder = tmp_path / "folder"
    for name, data in entries.items():
        target = folder / name
        if data is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.write_bytes(data)
    from_archive, _ = read_image_folder(archive)
    from_folder, _ = read_image_folder(folder)
    assert np.array_equal(from_archive["test"].images, from_folder["test"].images)


@pytest.mark.parametrize("mutate, message", [
    (lambda e: {k: v for k, v in e.items() if not k.startswith("test/")}, "no 'test/<class>"),
    (lambda e: {**e, "test/bird/": None, "train/bird/": None},
     "class folder 'train/bird' has no images"),
    (lambda e: {**e, "train/bird/": None, "train/bird/0.png": png_bytes(9)},
     "train and test have different classes"),
    (lambda e: {**e, "train/cat/0000.png": b"not an image"},
     "cannot read image 'train/cat/0000.png'"),
    (lambda e: {**e, "../evil/train/cat/x.png": png_bytes(3)}, "points outside the archive"),
])
def test_bad_archives_fail_with_a_message_naming_the_path(tmp_path, mutate, message):
    archive = make_archive(tmp_path / "bad.tar.gz", mutate(image_folder()))
    with pytest.raises(DataError, match=message) as err:
        read_image_folder(archive)
    assert str(archive) in str(err.value)


def test_images_are_resized_once_to_the_configured_size(tmp_path):
    entries = image_folder()
    entries["train/cat/0001.png"] = png_bytes(1, size=16)  # any size is resized
    archive = make_archive(tmp_path / "set.tar.gz", entries)
    splits, _ = read_image_folder(archive, size=24)
    assert splits["train"].images.shape == (6, 3, 24, 24) and splits["test"].images.shape[-1] == 24
    native, _ = read_image_folder(archive)
    assert native["train"].images.shape[-1] == 32
    cfg = DataConfig(source="set.tar.gz", limit_train=0, limit_test=0, val_fraction=0.0,
                     image_size=24)
    assert prepare(cfg, 0, tmp_path, tmp_path / "p")["image_size"] == 24
    assert Prepared(tmp_path / "p").image_size == 24


def test_a_split_that_cannot_fit_in_memory_is_refused_with_the_numbers(tmp_path, monkeypatch):
    import psutil

    class Little:
        available = 10 * 2**20  # 10 MiB free
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Little())
    cfg = DataConfig(source="synthetic", limit_train=0, limit_test=0, image_size=128)
    with pytest.raises(DataError, match=r"data.image_size=128: the train split needs 0.1 GiB "
                                        r"\(2,000 x 3 x 128 x 128 bytes\) but only 0.0 GiB"):
        prepare(cfg, 0, tmp_path, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_truncated_archive_is_reported(tmp_path):
    good = make_archive(tmp_path / "good.tar.gz", image_folder(per_class=20))
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated/corrupt"):
        read_image_folder(truncated)


def test_missing_source_path_names_the_resolved_path(tmp_path):
    cfg = DataConfig(source="nowhere/cifar.tar.gz", limit_train=0, limit_test=0)
    with pytest.raises(DataError, match=f"{tmp_path}/nowhere/cifar.tar.gz does not exist"):
        prepare(cfg, 0, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_balanced_subset_is_seeded_and_even():
    labels = np.repeat(np.arange(10), 50)
    subset = balanced_subset(labels, 95, seed=1)
    counts = np.bincount(labels[subset])
    assert len(subset) == 95 and counts.max() - counts.min() <= 1
    assert np.array_equal(subset, balanced_subset(labels, 95, seed=1))
    assert not np.array_equal(subset, balanced_subset(labels, 95, seed=2))
    assert len(balanced_subset(labels, 0, seed=1)) == 500


def test_prepare_writes_a_reproducible_prepared_folder(tmp_path):
    make_archive(tmp_path / "set.tar.gz", image_folder(per_class=5))
    cfg = DataConfig(source="set.tar.gz", limit_train=6, limit_test=0, val_fraction=0.0)
    first = prepare(cfg, 42, tmp_path, tmp_path / "a")
    second = prepare(cfg, 42, tmp_path, tmp_path / "b")
    assert first["sha256"] == second["sha256"]
    assert first["counts"] == {"train": {"cat": 3, "dog": 3}, "val": {"cat": 0, "dog": 0},
                               "test": {"cat": 5, "dog": 5}}
    assert first["source_sha256"] is not None
    loaded = Prepared(tmp_path / "a")
    assert loaded.splits["train"].images.dtype == np.uint8
    assert loaded.digest == first["sha256"] and loaded.classes == ["cat", "dog"]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_validation_split_is_held_out_of_train_seeded_and_balanced(tmp_path):
    make_archive(tmp_path / "set.tar.gz", image_folder(per_class=10))
    cfg = DataConfig(source="set.tar.gz", limit_train=0, limit_test=0, val_fraction=0.2)
    summary = prepare(cfg, 7, tmp_path, tmp_path / "p")
    assert summary["counts"]["val"] == {"cat": 2, "dog": 2}
    assert summary["counts"]["train"] == {"cat": 8, "dog": 8}
    splits = Prepared(tmp_path / "p").splits
    train_rows = {img.tobytes() for img in splits["train"].images}
    assert not any(img.tobytes() in train_rows for img in splits["val"].images)
    assert prepare(cfg, 7, tmp_path, tmp_path / "q")["sha256"] == summary["sha256"]


@pytest.mark.parametrize("fraction, problem", [(0.01, "leaving no validation image"),
                                               (0.99, "leaving no training image")])
def test_a_validation_fraction_that_empties_a_split_names_the_key(tmp_path, fraction, problem):
    from kdpipe.core.errors import ConfigError

    make_archive(tmp_path / "set.tar.gz", image_folder(per_class=10))
    cfg = DataConfig(source="set.tar.gz", limit_train=0, limit_test=0, val_fraction=fraction)
    with pytest.raises(ConfigError, match=rf"^data.val_fraction={fraction}: holds out \d+ of "
                                          rf"the 20 training images, {problem}"):
        prepare(cfg, 7, tmp_path, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_a_limit_decodes_only_the_images_it_keeps(tmp_path):
    entries = image_folder(per_class=10)
    entries["train/cat/0009.png"] = b"not an image"  # outside the seeded subset of 4 below
    make_archive(tmp_path / "set.tar.gz", entries)
    splits, _ = read_image_folder(tmp_path / "set.tar.gz", {"train": 4}, seed=0)
    full, _ = read_image_folder(make_archive(tmp_path / "ok.tar.gz", image_folder(per_class=10)))
    keep = balanced_subset(full["train"].labels, 4, seed=0)
    assert 9 not in keep
    assert np.array_equal(splits["train"].images, full["train"].images[keep])
    assert np.array_equal(splits["train"].labels, full["train"].labels[keep])


def test_batches_are_normalised_with_the_configured_statistics_in_channels_last():
    images = random_images(4)
    stored = to_device(images, torch.device("cpu"))
    assert stored.dtype == torch.uint8  # a quarter of float32's memory
    x = Normalize(MEAN, STD, torch.device("cpu"))(stored)
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = (images[1, 2, 5, 7] / 255 - MEAN[2]) / STD[2]
    assert x[1, 2, 5, 7].item() == pytest.approx(expected, rel=1e-5)


def test_batch_order_covers_every_sample_once_and_is_seeded():
    batches = batch_order(300, 128, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [128, 128, 44]
    assert sorted(torch.cat(batches).tolist()) == list(range(300))
    again = batch_order(300, 128, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


def test_augment_crops_and_flips_whole_batches():
    x = Normalize(MEAN, STD, torch.device("cpu"))(to_device(random_images(64), torch.device("cpu")))
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(out, x)
    # Every output is a shifted (and maybe mirrored) window of the zero-padded input.
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    nchw = augment(x.contiguous(), torch.Generator().manual_seed(0))  # either memory layout
    assert torch.equal(nchw, out) and nchw.is_contiguous(memory_format=torch.channels_last)


def test_one_reading_of_data_source_expands_home_and_takes_relative_paths_from_the_root(
        tmp_path, monkeypatch):
    from kdpipe.data.sources import TORCHVISION_CIFAR10_URL, dataset_uri, local_path

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root, prepared = tmp_path / "repo", tmp_path / "repo" / "data" / "prepared"
    assert local_path("~/cifar.tar.gz", root) == tmp_path / "home" / "cifar.tar.gz"
    assert local_path("../shared/cifar.tar.gz", root) == tmp_path / "shared" / "cifar.tar.gz"
    assert local_path("synthetic", root) is None
    assert dataset_uri("~/cifar.tar.gz", root, prepared) == \
        (tmp_path / "home" / "cifar.tar.gz").as_uri()  # MLflow's record names the real file
    assert dataset_uri("synthetic", root, prepared) == prepared.as_uri()
    assert dataset_uri("cifar10", root, prepared) == TORCHVISION_CIFAR10_URL
