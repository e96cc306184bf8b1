"""Data and weights on first use, against a local HTTP server (``tests/httpserve.py``) that counts requests: a clean
Imagenette download into the user cache, a download cut off half way, a wrong MD5, a server that is down, a tarball
with a ``../`` member, and the second run making no request; ``model.weights=download`` through torchvision's and
timm's own download machinery (the weights entry's URL with ``TORCH_HOME``; timm's ``pretrained_cfg_overlay``)."""
from __future__ import annotations

import hashlib
import io
import socket
import time

import pytest
import torch
from hydra import compose, initialize_config_dir

from httpserve import WNIDS, Server, imagenette_tarball
from zf.download import fetch_imagenette, resolve_data_root
from zf.errors import CheckpointError, DataError

TGZ = "/imagenette2-320.tgz"


@pytest.fixture(scope="module")
def tarball() -> bytes:
    return imagenette_tarball()


@pytest.fixture()
def server(tarball):
    s = Server({TGZ: tarball})
    yield s
    s.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def left_over(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_first_run_downloads_into_the_user_cache_and_the_second_makes_no_request(tmp_path, monkeypatch, server,
                                                                                 tarball):
    from zf.data import ImageDataset
    from zf.experiments.classes import readable

    monkeypatch.setenv("ZF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZF_DATA", raising=False)
    root = resolve_data_root(None, url=server.url + TGZ, md5=md5(tarball), shared=tmp_path / "no-shared-copy",
                             progress=False)
    assert root == tmp_path / "home" / "imagenette2-320"
    assert server.gets(TGZ) == 2  # torchvision's redirect probe, then the download
    assert sorted(p.name for p in (root / "val").iterdir()) == list(WNIDS)
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["imagenette2-320"]  # no staging folder left
    val = ImageDataset(root / "val")
    assert readable(val.classes) == ["tench", "English springer"]
    x, label, _ = val[1]
    assert x.shape == (3, 224, 224) and label == 0  # 320x480 portrait: shorter side to 224, centre crop
    n = len(server.requests)
    assert resolve_data_root(None, url=server.url + TGZ, md5=md5(tarball), shared=tmp_path / "none") == root
    assert len(server.requests) == n  # the second run reads the cache without any request


def test_a_copy_in_shared_wins_and_makes_no_request(tmp_path, monkeypatch, server, tarball):
    monkeypatch.setenv("ZF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZF_DATA", raising=False)
    (tmp_path / "shared" / "val").mkdir(parents=True)
    assert resolve_data_root(None, url=server.url + TGZ, shared=tmp_path / "shared") == tmp_path / "shared"
    assert server.requests == [] and not (tmp_path / "home").exists()


def test_a_download_cut_off_half_way_fails_in_one_line_and_the_rerun_succeeds(tmp_path, server, tarball):
    server.drops[TGZ] = {2}  # the download itself (the first GET is torchvision's redirect probe)
    dest = tmp_path / "data"
    with pytest.raises(DataError) as e:
        fetch_imagenette(dest, server.url + TGZ, md5(tarball), progress=False)
    assert "\n" not in str(e.value) and server.url + TGZ in str(e.value)
    assert left_over(tmp_path) == []  # never half there
    assert fetch_imagenette(dest, server.url + TGZ, md5(tarball), progress=False) == dest
    assert server.gets(TGZ) == 4 and (dest / "train" / WNIDS[1]).is_dir()
    assert list(tmp_path.iterdir()) == [dest]


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(tmp_path, server):
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="does not match its MD5") as e:
        fetch_imagenette(dest, server.url + TGZ, "0" * 32, progress=False)
    assert "\n" not in str(e.value)
    assert left_over(tmp_path) == []


def test_a_server_that_is_down_is_one_line_within_seconds(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}{TGZ}"
    t = time.monotonic()
    with pytest.raises(DataError) as e:
        resolve_data_root(tmp_path / "data", download=True, url=url, md5="0" * 32, progress=False)
    assert time.monotonic() - t < 10
    msg = str(e.value)
    assert "\n" not in msg and url in msg and str(tmp_path / "data") in msg and "341 MB" in msg
    assert left_over(tmp_path) == []


def test_the_default_archive_is_torchvisions_and_the_message_gives_its_size(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    from zf.download import IMAGENETTE_320_MB, imagenette_archive

    url, digest = imagenette_archive()
    assert url.endswith("imagenette2-320.tgz") and len(digest) == 32

    def offline(url, *a, **k):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(tvu, "_urlretrieve", offline)       # no network: torchvision's own fetch fails
    monkeypatch.setattr(tvu, "_get_redirect_url", lambda url, max_hops=3: url)
    with pytest.raises(DataError) as e:
        fetch_imagenette(tmp_path / "d", progress=False)
    assert url in str(e.value) and f"{IMAGENETTE_320_MB} MB" in str(e.value) and str(tmp_path / "d") in str(e.value)


def test_a_tarball_with_a_dotdot_member_is_refused(tmp_path):
    bad = imagenette_tarball(extra={"imagenette2-320/../../escaped.txt": b"x"})
    s = Server({TGZ: bad})
    try:
        (tmp_path / "in").mkdir()
        with pytest.raises(DataError, match="unsafe member") as e:
            fetch_imagenette(tmp_path / "in" / "data", s.url + TGZ, md5(bad), progress=False)
    finally:
        s.close()
    assert "escaped.txt" in str(e.value)
    assert left_over(tmp_path) == ["in"]  # nothing extracted, the archive not kept


def test_an_explicit_root_that_does_not_exist_is_an_error_without_download(tmp_path, server, tarball):
    with pytest.raises(DataError, match="data.download=true") as e:
        resolve_data_root(tmp_path / "typo", url=server.url + TGZ, md5=md5(tarball))
    assert server.requests == [] and "\n" not in str(e.value)
    root = resolve_data_root(tmp_path / "typo", download=True, url=server.url + TGZ, md5=md5(tarball),
                             progress=False)
    assert (root / "val" / WNIDS[0]).is_dir() and server.gets() == 2


def test_the_config_resolves_a_null_root_to_the_download(tmp_path, monkeypatch, server, tarball):
    """``data=imagenette`` with nothing named: ``dataset_from_cfg`` downloads into ``ZF_HOME`` and records the folder
    in the config."""
    from zf.edge.runtime import dataset_from_cfg

    from test_run import CONFIGS

    monkeypatch.setenv("ZF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZF_DATA", raising=False)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("run", [f"paths.data_dir={tmp_path / 'nothing'}", f"data.url={server.url + TGZ}",
                              f"data.md5={md5(tarball)}", "progress=false"])
    ds = dataset_from_cfg(cfg, "val")
    assert cfg.data.root == str(tmp_path / "home" / "imagenette2-320") and len(ds) == 4
    assert ds.classes == list(WNIDS)


# --- weights -------------------------------------------------------------------------------------------------------


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture()
def torchvision_entry(monkeypatch, tmp_path):
    """ResNet-18's DEFAULT weights entry pointed at a local server serving a tiny state dict (only conv1), under a
    file name carrying its SHA-256 prefix as torchvision's do; ``TORCH_HOME`` in ``tmp_path``."""
    import torchvision.models as tvm

    conv1 = torch.randn(64, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    data = saved({"conv1.weight": conv1})
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    s = Server({f"/{name}": data, "/resnet18-00000000.pth": data})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(tvm.ResNet18_Weights.DEFAULT.value, "url", f"{s.url}/{name}")
    yield s, conv1, tmp_path / "torch" / "hub" / "checkpoints" / name
    s.close()


def test_torchvision_download_lands_in_the_hub_cache_and_is_read_from_there(torchvision_entry):
    from zf.net.models import build_model

    s, conv1, cached = torchvision_entry
    with pytest.warns(UserWarning, match="holds only part"):
        m = build_model("torchvision", weights="download", arch_name="resnet18")
    assert torch.equal(m.conv1.weight, conv1) and cached.is_file() and m.zf_weights == str(cached)
    assert s.gets() == 1
    with pytest.warns(UserWarning, match="holds only part"):
        m2 = build_model("torchvision", weights="download", arch_name="resnet18")
    assert torch.equal(m2.conv1.weight, conv1) and s.gets() == 1  # from the cache, no request
    assert build_model("torchvision", weights="cache", arch_name="resnet18").zf_weights == str(cached)


def test_torchvision_hash_mismatch_is_refused_and_nothing_is_kept(torchvision_entry, monkeypatch):
    import torchvision.models as tvm

    from zf.net.models import build_model

    s, _, cached = torchvision_entry
    monkeypatch.setattr(tvm.ResNet18_Weights.DEFAULT.value, "url", f"{s.url}/resnet18-00000000.pth")
    with pytest.raises(CheckpointError, match="hash") as e:
        build_model("torchvision", weights="download", arch_name="resnet18")
    assert "\n" not in str(e.value)
    assert left_over(cached.parent) == []


def test_torchvision_download_with_the_server_down_is_one_line(torchvision_entry, monkeypatch):
    import torchvision.models as tvm

    from zf.net.models import build_model

    s, _, cached = torchvision_entry
    s.close()
    t = time.monotonic()
    with pytest.raises(CheckpointError, match="cannot download") as e:
        build_model("torchvision", weights="download", arch_name="resnet18")
    assert time.monotonic() - t < 10 and "\n" not in str(e.value) and str(cached) in str(e.value)
    assert left_over(cached.parent) == []


def test_timm_download_through_its_pretrained_cfg(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from zf.net.models import build_model

    torch.manual_seed(1)
    state = timm.create_model("test_resnet", pretrained=False, num_classes=1000).state_dict()
    s = Server({"/test_resnet.pth": saved(state)})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    overlay = {"url": f"{s.url}/test_resnet.pth", "hf_hub_id": None}
    try:
        m = build_model("timm", weights="download", arch_name="test_resnet", pretrained_cfg_overlay=overlay)
        assert s.gets() == 1
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
        assert (tmp_path / "torch" / "hub" / "checkpoints" / "test_resnet.pth").is_file()
        build_model("timm", weights="download", arch_name="test_resnet", pretrained_cfg_overlay=overlay)
        assert s.gets() == 1  # the second run reads the hub cache
    finally:
        s.close()
