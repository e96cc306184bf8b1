"""Copy the figures of a reproduction (outputs/reproduce/<step>/.../figures/*.png) into docs/figures/, downscaled so
each stays under a size limit (REPRODUCTION.md embeds them):  python scripts/docs_figures.py [--max-kb 150]"""
import argparse
import io
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def shrink(src: Path, dst: Path, max_kb: int, max_side: int = 1400) -> int:
    """Save ``src`` as PNG at ``dst``, halving the long side (and finally quantising) until it fits ``max_kb``."""
    img = Image.open(src).convert("RGB")
    side = min(max_side, max(img.size))
    while True:
        scale = side / max(img.size)
        im = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS) \
            if scale < 1 else img
        for candidate in (im, im.quantize(256)):
            buf = io.BytesIO()
            candidate.save(buf, "PNG", optimize=True)
            if buf.tell() <= max_kb * 1024 or side <= 200:
                dst.write_bytes(buf.getvalue())
                return buf.tell()
        side = int(side * 0.75)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", default=str(ROOT / "outputs" / "reproduce"))
    ap.add_argument("--dst", default=str(ROOT / "docs" / "figures"))
    ap.add_argument("--max-kb", type=int, default=150)
    a = ap.parse_args()
    src, dst = Path(a.src), Path(a.dst)
    dst.mkdir(parents=True, exist_ok=True)
    for png in sorted(src.glob("*/**/figures/*.png")):
        step = png.relative_to(src).parts[0]
        sub = png.parent.parent.name if png.parent.parent.name != step else ""
        name = "_".join(p for p in (step, sub, png.stem) if p).replace("=", "") + ".png"
        big = png.stem == "methods_overview"  # many layers and methods in one figure: four times the budget
        size = shrink(png, dst / name, a.max_kb * (4 if big else 1), max_side=2000 if big else 1400)
        print(f"{png.relative_to(src)} -> {dst / name} ({size // 1024} KB)")


if __name__ == "__main__":
    main()
