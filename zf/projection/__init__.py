"""The projection engines: the rule table of the deconvnet, guided backpropagation and the gradient (``rules``), the
window engine for ``features`` stacks (``stack``), the autograd engine for any graph (``graph``), what they share
(``windows``) and the entry points that pick one (``api``).  Built on ``zf.net``."""
