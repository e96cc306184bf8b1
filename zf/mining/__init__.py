"""Mining: the streaming top-k of every unit over a data set (``mine``), its disk cache (``cache``) and the top-k
table it produces (``table.TopK``).  Built on ``zf.net`` and ``zf.data``."""
