"""Views and figures of a run: the run-directory layout and writers (``results``), patches and projection views
(``visualize``), image grids and curves (``plotting``), one layer's files (``render``) and the HTML gallery
(``gallery``).  Built on ``zf.mining`` (the tables) and ``zf.projection`` (the projections)."""
