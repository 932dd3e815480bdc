import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from covfast.data import InfectionMask, covid_dataloaders, load_mask, read_xray  # noqa: E402
from covfast.dataset import DATASET_DIR  # noqa: E402
from covfast.errors import CovfastError  # noqa: E402


def check_batches(dls, size, bs):
    xb, yb = dls.train.one_batch()
    assert xb.dtype == torch.float32 and xb.shape == (bs, 3, size, size)
    assert yb.shape == (bs, size, size) and set(yb.unique().tolist()) <= {0, 1}
    assert isinstance(yb, InfectionMask)
    # the validation loader is not shuffled or augmented: batch i is items[i*bs:(i+1)*bs]
    for i, (xv, yv) in enumerate(dls.valid):
        labels = dls.valid.items.label.iloc[i * bs:(i + 1) * bs].tolist()
        assert set(yv.unique().tolist()) <= {0, 1}
        assert (yv.flatten(1).sum(1) > 0).tolist() == [label == "COVID-19" for label in labels]
        if i == 2:
            break


def test_synthetic_batches(synth_root):
    dls = covid_dataloaders(synth_root, img_size=48, bs=4, classes=("COVID-19", "Non-COVID"), device="cpu")
    assert len(dls.train_ds) == 12 and len(dls.valid_ds) == 12
    assert set(dls.train.items.split) == {"Train"} and set(dls.valid.items.split) == {"Val"}
    check_batches(dls, 48, 4)
    import matplotlib.pyplot as plt
    plt.close("all")
    dls.show_batch(max_n=2)
    axes = [ax for ax in plt.gcf().axes if ax.images]
    assert len(axes) == 2
    for ax in axes:
        xray, mask = ax.images  # the X-ray, then the mask drawn over it
        # masks carry their own vmin/vmax (0/1 masks render blank otherwise) and the red colour map
        assert mask.norm.vmin == 0 and mask.norm.vmax == 1 and mask.get_cmap().name == "infection"
        assert set(np.unique(mask.get_array())) <= {0, 1}
    plt.close("all")


def _images_in(root, split: str) -> int:
    "The X-rays of a split of the tree, counted from its folders (the shared copy grows: no count is pinned here)."
    return sum(1 for _ in (root / DATASET_DIR / split).glob("*/images/*.png"))


def test_real_batches(real_root):
    dls = covid_dataloaders(real_root, img_size=64, bs=8, device="cpu")
    # all three classes by default: every X-ray of Train and of Val
    assert len(dls.train_ds) == _images_in(real_root, "Train") and len(dls.valid_ds) == _images_in(real_root, "Val")
    check_batches(dls, 64, 8)


def test_all_classes_adds_normal(synth_root):
    dls = covid_dataloaders(synth_root, img_size=32, bs=2, classes=("COVID-19", "Non-COVID", "Normal"))
    assert len(dls.train_ds) == 18


def test_mask_with_other_values_is_refused(tmp_path):
    from PIL import Image
    p = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 255], [128, 0]], np.uint8)).save(p)
    with pytest.raises(CovfastError, match="128"):
        load_mask(p)


def test_read_xray_scales_16_bit(tmp_path):
    from PIL import Image
    p = tmp_path / "x16.png"
    Image.fromarray(np.array([[0, 65535], [32768, 0]], np.uint16)).save(p)
    assert read_xray(p).tolist() == [[0, 255], [128, 0]]


def test_loader_settings_keep_a_gpu_fed_and_leave_the_cpu_path_alone(monkeypatch):
    from covfast.data import loader_settings
    assert loader_settings(torch.device("cpu")) == {"num_workers": 0}  # the PNG cache lives in the main process
    assert loader_settings("cpu", 3) == {"num_workers": 3}
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_settings("cuda") == {"num_workers": 8, "pin_memory": True, "persistent_workers": True}
    assert loader_settings("cuda", 2) == {"num_workers": 2, "pin_memory": True, "persistent_workers": True}


def test_items_are_prepared_once_and_served_unchanged(synth_root):
    dls = covid_dataloaders(synth_root, img_size=32, bs=4, augment=False)
    first = list(dls.valid)  # fastai's item pipeline: decode, mask codes, resize, ToTensor
    assert len(dls.valid._items) == len(dls.valid.items)
    again = list(dls.valid)  # from the item cache
    for (x1, y1), (x2, y2) in zip(first, again):
        assert type(x2) is type(x1) and type(y2) is type(y1)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # a loader for other items never sees these
    test = dls.test_dl(dls.valid.items.iloc[:2])
    assert test._items == {} and len(list(test)) == 1
