"""A request resolved once into typed, frozen values: projection options, render options, the main job's request
and the target layer (module, receptive field, engine), each checked where it is made."""
from __future__ import annotations

import dataclasses

import pytest
import torchvision

from zf.errors import ConfigError, LayerError
from zf.jobs.topk import TopkRequest
from zf.net.models import zfnet
from zf.net.receptive import graph_receptive_fields, receptive_fields
from zf.projection.api import resolve_target
from zf.projection.rules import ProjectionOptions
from zf.views.render import RenderOptions


def test_options_are_checked_once_and_frozen():
    opts = ProjectionOptions(seed_mode="one", norm="gradient")
    assert (opts.method, opts.with_method("guided").method, opts.with_method("guided").seed_mode) == \
        ("deconvnet", "guided", "one")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.method = "gradient"
    for bad, message in ((dict(method="deconv"), "method='deconv'"), (dict(seed_mode="activations"), "seed_mode="),
                         (dict(norm="lrn"), "norm='lrn'")):
        with pytest.raises(ConfigError, match=message):
            ProjectionOptions(**bad)
    with pytest.raises(ConfigError, match="method='foo': use one of deconvnet, guided, gradient"):
        RenderOptions(("deconvnet", "foo"))
    with pytest.raises(ConfigError, match="display='foo': use one of symmetric, minmax"):
        RenderOptions(display="foo")
    with pytest.raises(ConfigError, match="k=0"):
        TopkRequest(layers=[4], k=0)
    assert TopkRequest(layers=[1, "conv4"], units=[3, "5"]).units == (3, 5)


def test_target_holds_module_receptive_field_and_engine():
    model = zfnet(num_classes=10, width=0.25).eval()
    t = resolve_target(model, 4, "relu", 224)
    assert (t.name, t.layer.path, t.engine, t.tap) == ("relu4", "features.relu4", "stack", "relu")
    assert t.rf == receptive_fields(model, 224)["relu4"] and t.plan.stop == t.layer.index
    resnet = torchvision.models.resnet18().eval()
    g = resolve_target(resnet, "layer2", "relu", 96)
    assert (g.name, g.engine, g.plan) == ("layer2", "graph", None)
    assert g.rf == graph_receptive_fields(resnet, 96, ["layer2"])["layer2"] and g.rf.stride == 8
    with pytest.raises(LayerError, match="conv9"):
        resolve_target(model, "conv9")


def test_request_checks_units_against_each_layer():
    model = zfnet(num_classes=10, width=0.25).eval()
    request = TopkRequest(layers=[1, 4], units=[0, 95])
    with pytest.raises(ConfigError, match=r"units=\[95\]: relu1 has units 0..23"):
        request.resolve(model, 64)
    assert [t.name for t in TopkRequest(layers=[1, 4], units=[0, 23]).resolve(model, 64)] == ["relu1", "relu4"]
