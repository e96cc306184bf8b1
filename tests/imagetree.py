"""A tiny ImageFolder tree for tests: ``root/{train,val}/c<k>/<i>.jpg``, noise JPEGs whose class k has a dimmed
channel k (so there is something to learn)."""
import numpy as np
from PIL import Image


def write_tree(root, per_class=8, val_per_class=2, classes=3, size=(64, 72), seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                a[..., c] //= 4
                Image.fromarray(a).save(d / f"{i}.jpg", quality=90)
    return root
