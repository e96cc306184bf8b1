"""Jobs: the main job (``topk.topk_job``: mine, project, render, gallery), the composition of the layers below."""
