"""A live explorer of a main-job run in the browser (``zf.explore``):

    python scripts/explore.py run=outputs/run/<date>            # then open http://127.0.0.1:8765
    python scripts/explore.py run=outputs/run port=9000          # a folder of runs: the page picks one
    python scripts/explore.py run=outputs/run/<date> host=0.0.0.0  # other machines too (warns)

Upload or drop an image (or pick one of the run's, or use the camera), choose a layer, click a unit: its
activation map over the image, the projection of its strongest activation, and its top 9 from the run."""
import sys

from zf.explore import main

if __name__ == "__main__":
    sys.exit(main())
