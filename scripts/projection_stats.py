"""How readable a main-job run's projections are: ``python scripts/projection_stats.py <run dir> [--layers relu4]``.
Prints, per layer and method, the image dependence (median correlation of a unit's k projections; 1.0 = the same
picture for every image) and the edge alignment (median correlation between a projection's blurred magnitude and
its own patch's blurred edge map, beside the chance level with another row's patch).  No model, no data pass.
The same as ``zf stats <run dir>`` (``zf.edge.command.stats``)."""
from zf.edge.command import stats
from zf.errors import script_main

if __name__ == "__main__":
    script_main(stats)  # a user error: one line, exit status 2
