"""Receptive fields against the published numbers (Araujo, Norris and Sim, Distill 2019) and unit boxes."""
import numpy as np
import pytest
import torch

from zf.net.models import alexnet, vgg16, zfnet
from zf.net.receptive import RF, receptive_fields, unit_box

ZF = {"conv1": (7, 2), "pool1": (11, 4), "conv2": (27, 8), "pool2": (43, 16), "conv3": (75, 16), "conv4": (107, 16),
      "conv5": (139, 16), "pool5": (171, 32)}
ALEXNET = {"conv1": (11, 4), "pool1": (19, 8), "conv2": (51, 8), "conv3": (99, 16), "conv4": (131, 16),
           "conv5": (163, 16), "pool5": (195, 32)}
VGG16 = {"conv1_1": (3, 1), "pool1": (6, 2), "conv2_1": (10, 2), "pool2": (16, 4), "conv3_1": (24, 4),
         "conv3_2": (32, 4), "pool3": (44, 8), "conv4_1": (60, 8), "conv4_2": (76, 8), "pool4": (100, 16),
         "conv5_1": (132, 16), "conv5_2": (164, 16), "pool5": (212, 32)}


@pytest.mark.parametrize("factory, published", [(zfnet, ZF), (alexnet, ALEXNET), (vgg16, VGG16)],
                         ids=["zfnet", "alexnet", "vgg16"])
def test_published_receptive_fields(factory, published):
    with torch.device("meta"):  # geometry only: skip initialising the weights
        model = factory()
    rfs = receptive_fields(model)
    assert {n: (rfs[n].size, rfs[n].stride) for n in published} == published


def test_zfnet_map_sizes_and_pointwise_layers():
    rfs = receptive_fields(zfnet(width=0.25), 224)
    assert [rfs[n].out_size for n in ZF] == [110, 55, 26, 13, 13, 13, 13, 6]
    assert rfs["relu1"] == rfs["conv1"] and rfs["norm2"] == rfs["pool2"]
    assert receptive_fields(zfnet(conv1=(11, 4, 2)))["conv1"] == RF(11, 4, -2, 55)


def test_unit_box_scalar_and_vectorised():
    with torch.device("meta"):
        rf = receptive_fields(zfnet())["pool5"]  # size 171, stride 32, offset -59
    b = unit_box(rf, 0, 5, 224)
    assert (b.y0, b.y1, b.x0, b.x1) == (-59, 112, 101, 272)
    assert (b.cy0, b.cy1, b.cx0, b.cx1) == (0, 112, 101, 224)
    assert (b.top, b.bottom, b.left, b.right) == (59, 0, 0, 48)
    assert b.outside == 171 * 171 - 112 * 123
    ys, xs = np.array([0, 5, 2]), np.array([5, 0, 2])
    v = unit_box(rf, ys, xs, (224, 224))
    for i in range(3):
        s = unit_box(rf, int(ys[i]), int(xs[i]), 224)
        assert [int(getattr(v, f)[i]) for f in ("y0", "cy1", "cx0", "left", "bottom")] == \
               [s.y0, s.cy1, s.cx0, s.left, s.bottom]
    assert unit_box(rf, 2, 2, 224).outside == 0


def test_graph_models_by_module_path_and_rectangular_boxes():
    import torchvision
    from torch import nn

    from zf.net.receptive import graph_receptive_fields

    assert receptive_fields(zfnet(width=0.25))["conv1"].size_hw == (7, 7)  # square RFs fill the pairs
    rfs = graph_receptive_fields(torchvision.models.resnet18(), 64, ["layer1", "layer2.1"])
    assert rfs["layer1"] == RF(43, 4, -21, 16) and rfs["layer2.1"].size_hw == (99, 99)  # published ResNet-18
    net = nn.Sequential(nn.Conv2d(3, 2, (3, 7), stride=(2, 1), padding=(1, 3)))
    rf = receptive_fields(net, (20, 30))["0"]
    assert (rf.size_hw, rf.stride_hw, rf.offset_hw, rf.out_hw) == ((3, 7), (2, 1), (-1, -3), (10, 30))
    b = unit_box(rf, 9, 29, (20, 30))
    assert (b.y0, b.y1, b.x0, b.x1, b.bottom, b.right) == (17, 20, 26, 33, 0, 3)
