"""Strict checkpoint loading: pytorch-i3d, torchvision S3D, kylemin S3D, timm/torchvision ResNet-18.

Every "foreign" file is built here with the foreign key names, so no download is
needed. The pytorch-i3d file is built from a golden key/shape list transcribed from
pytorch-i3d's published model definition (``golden/``), not from our own model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from signstream import SignstreamError
from signstream.models import create_model, read_state_dict
from signstream.models.s3d import kylemin_key_map, torchvision_to_kylemin_key


def _randomise_bn(model: torch.nn.Module, seed: int = 1) -> None:
    # Non-default running statistics, so a test notices if they were not loaded.
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


GOLDEN_I3D = Path(__file__).parent / "golden" / "pytorch_i3d_rgb_imagenet_keys.txt"


def _golden_i3d_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of pytorch-i3d's rgb_imagenet.pt, from its published definition."""
    shapes = {}
    for line in GOLDEN_I3D.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            shapes[key] = tuple(int(n) for n in shape.split(","))
    return shapes


def _pytorch_i3d_state_dict(classes: int = 400) -> dict[str, torch.Tensor]:
    """An I3D state dict laid out as pytorch-i3d's rgb_*.pt: built from the golden key list,
    not from our model, so a drift in our names or shapes fails to load."""
    g = torch.Generator().manual_seed(3)
    sd = {}
    for key, shape in _golden_i3d_shapes().items():
        if key.startswith("logits."):
            shape = (classes, *shape[1:])
        if key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd


def test_golden_i3d_list_matches_the_published_layer_table():
    shapes = _golden_i3d_shapes()
    # 3 stem units + 9 inception modules x 6 units, 5 tensors each, + the 2 logits tensors
    assert len(shapes) == (3 + 9 * 6) * 5 + 2
    assert shapes["Mixed_5c.b1b.conv3d.weight"] == (384, 192, 3, 3, 3)
    assert shapes["Mixed_4b.b0.conv3d.weight"] == (192, 480, 1, 1, 1)
    assert not any(k.endswith("num_batches_tracked") for k in shapes)


def test_our_i3d_has_exactly_the_golden_backbone_keys_and_shapes():
    ours = {
        k: tuple(v.shape) for k, v in create_model("i3d").state_dict().items() if not k.endswith("num_batches_tracked")
    }
    golden = {k: v for k, v in _golden_i3d_shapes().items() if not k.startswith("logits.")}
    assert ours == golden


def _video(frames: int = 16, size: int = 32) -> torch.Tensor:
    return torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0))


# -- I3D ---------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [400, 157])  # rgb_imagenet.pt / rgb_charades.pt
def test_pytorch_i3d_state_dict_loads_strictly_with_every_value(tmp_path, classes):
    sd = _pytorch_i3d_state_dict(classes)
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(sd, path)
    model = create_model("i3d", weights=path)
    loaded = model.state_dict()
    for key, value in sd.items():
        if not key.startswith("logits."):
            assert torch.equal(loaded[key], value), key
    assert not any(k.startswith("logits.") for k in loaded)
    assert "Mixed_5c.b3b.conv3d.weight" in loaded and "Conv3d_1a_7x7.bn.running_var" in loaded


def test_i3d_loads_wrapped_prefixed_and_safetensors_files(tmp_path):
    sd = _pytorch_i3d_state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    save_file(sd, str(tmp_path / "plain.safetensors"))
    a = create_model("i3d", weights=tmp_path / "wrapped.pth").state_dict()
    b = create_model("i3d", weights=tmp_path / "plain.safetensors").state_dict()
    assert torch.equal(a["Mixed_4d.b1b.bn.running_mean"], sd["Mixed_4d.b1b.bn.running_mean"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_i3d_stop_after_4_drops_the_unbuilt_blocks_explicitly(tmp_path):
    sd = _pytorch_i3d_state_dict()
    torch.save(sd, tmp_path / "rgb_imagenet.pt")
    model = create_model("i3d", weights=tmp_path / "rgb_imagenet.pt", stop_after=4)
    assert torch.equal(model.state_dict()["Mixed_4f.b0.conv3d.weight"], sd["Mixed_4f.b0.conv3d.weight"])


def test_extra_missing_and_misshaped_keys_raise_naming_key_and_file(tmp_path):
    sd = _pytorch_i3d_state_dict()
    extra = dict(sd, **{"Mixed_5c.b0.extra": torch.zeros(1), "logits.conv3d.other": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(
        SignstreamError,
        match=r"extra\.pt.*2 unexpected: Mixed_5c\.b0\.extra, logits\.conv3d\.other",
    ):
        create_model("i3d", weights=tmp_path / "extra.pt")
    missing = {k: v for k, v in sd.items() if k != "Mixed_3b.b2b.bn.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(SignstreamError, match=r"1 missing: Mixed_3b\.b2b\.bn\.weight"):
        create_model("i3d", weights=tmp_path / "missing.pt")
    shaped = dict(sd, **{"Conv3d_1a_7x7.conv3d.weight": torch.zeros(64, 2, 7, 7, 7)})
    torch.save(shaped, tmp_path / "shape.pt")
    with pytest.raises(
        SignstreamError,
        match=r"Conv3d_1a_7x7\.conv3d\.weight \(64, 2, 7, 7, 7\) vs \(64, 3, 7, 7, 7\)",
    ):
        create_model("i3d", weights=tmp_path / "shape.pt")


def test_error_lists_at_most_five_keys_and_counts_the_rest(tmp_path):
    sd = dict(_pytorch_i3d_state_dict(), **{f"junk{i}": torch.zeros(1) for i in range(8)})
    torch.save(sd, tmp_path / "junk.pt")
    with pytest.raises(SignstreamError, match=r"8 unexpected: junk0, junk1, junk2, junk3, junk4 \(\+3 more\)"):
        create_model("i3d", weights=tmp_path / "junk.pt")


def test_missing_file_is_a_one_line_error_saying_where_to_get_it(tmp_path):
    with pytest.raises(SignstreamError) as err:
        create_model("i3d", weights=tmp_path / "nope" / "rgb_imagenet.pt")
    msg = str(err.value)
    assert "\n" not in msg and "nope/rgb_imagenet.pt" in msg and "pytorch-i3d" in msg
    with pytest.raises(SignstreamError, match="s3d-d76dad2f.pth"):
        create_model("s3d", weights=tmp_path / "s3d.pth")


def test_unreadable_or_non_state_dict_files_raise(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SignstreamError, match="garbage.pt: cannot read checkpoint"):
        read_state_dict(tmp_path / "garbage.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(SignstreamError, match="list.pt: not a state dict"):
        read_state_dict(tmp_path / "list.pt")


# -- S3D ---------------------------------------------------------------------------


def _torchvision_s3d() -> torch.nn.Module:
    torch.manual_seed(5)
    tv = torchvision.models.video.s3d(weights=None)
    _randomise_bn(tv)
    return tv.eval()


def _pooled(features: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return features(x).mean(dim=(3, 4)).transpose(1, 2)


def test_torchvision_s3d_checkpoint_loads_and_features_equal_torchvision(tmp_path):
    tv = _torchvision_s3d()
    torch.save(tv.state_dict(), tmp_path / "s3d-d76dad2f.pth")
    model = create_model("s3d", weights=tmp_path / "s3d-d76dad2f.pth").eval()
    assert model.variant == "torchvision" and model.input_spec.mean[0] == 0.43216
    x = _video(16)
    with torch.no_grad():
        ours = model.forward_features(x)
    assert torch.equal(ours, _pooled(tv.features, x))


def test_s3d_stop_after_4_equals_torchvision_features_up_to_mixed_4f(tmp_path):
    tv = _torchvision_s3d()
    torch.save(tv.state_dict(), tmp_path / "s3d.pth")
    model = create_model("s3d", weights=tmp_path / "s3d.pth", stop_after=4).eval()
    x = _video(16)
    with torch.no_grad():
        ours = model.forward_features(x)
    assert ours.shape == (1, 4, 832)
    assert torch.equal(ours, _pooled(tv.features[:13], x))


def test_kylemin_key_map_uses_kylemin_module_names():
    mapping = kylemin_key_map()
    # Names as laid out in kylemin/S3D model.py (SepConv3d, BasicConv3d, Mixed_*, fc).
    expected = {
        "base.0.conv_s.weight": "features.0.0.0.weight",
        "base.0.bn_t.running_var": "features.0.1.1.running_var",
        "base.2.conv.weight": "features.2.0.weight",
        "base.3.bn_s.bias": "features.3.0.1.bias",
        "base.5.branch0.0.conv.weight": "features.5.branch0.0.weight",
        "base.5.branch0.0.bn.weight": "features.5.branch0.1.weight",
        "base.8.branch1.0.bn.running_mean": "features.8.branch1.0.1.running_mean",
        "base.12.branch2.1.conv_t.weight": "features.12.branch2.1.1.0.weight",
        "base.15.branch3.1.bn.bias": "features.15.branch3.1.1.bias",
        "fc.0.weight": "classifier.1.weight",
    }
    for kylemin, tv in expected.items():
        assert mapping[kylemin] == tv
    assert len(set(mapping.values())) == len(mapping)


def _kylemin_file(tmp_path, tv, drop=None, extra=None):
    # Invert our own map: rename every torchvision key to kylemin's name (DataParallel-saved).
    sd = {f"module.{torchvision_to_kylemin_key(k)}": v for k, v in tv.state_dict().items()}
    if drop:
        del sd[f"module.{drop}"]
    if extra:
        sd[f"module.{extra}"] = torch.zeros(1)
    torch.save(sd, tmp_path / "S3D_kinetics400.pt")
    return tmp_path / "S3D_kinetics400.pt"


def test_kylemin_checkpoint_loads_via_key_map_and_selects_its_input_spec(tmp_path):
    tv = _torchvision_s3d()
    model = create_model("s3d", weights=_kylemin_file(tmp_path, tv)).eval()
    assert model.variant == "kylemin" and model.input_spec.mean == (0.5, 0.5, 0.5)
    x = _video(16)
    with torch.no_grad():
        ours = model.forward_features(x)
    assert torch.equal(ours, _pooled(tv.features, x))
    forced = create_model("s3d", weights=tmp_path / "S3D_kinetics400.pt", variant="torchvision")
    assert forced.input_spec.mean[0] == 0.43216


def test_kylemin_checkpoint_with_an_extra_or_missing_key_raises_naming_it(tmp_path):
    tv = _torchvision_s3d()
    with pytest.raises(SignstreamError, match=r"unexpected: base\.5\.branch0\.0\.gate\.weight"):
        create_model("s3d", weights=_kylemin_file(tmp_path, tv, extra="base.5.branch0.0.gate.weight"))
    # A missing key is named under the model's (torchvision) name.
    with pytest.raises(SignstreamError, match=r"missing: features\.9\.branch1\.1\.1\.1\.running_var"):
        create_model("s3d", weights=_kylemin_file(tmp_path, tv, drop="base.9.branch1.1.bn_t.running_var"))


# -- ResNet-18 ---------------------------------------------------------------------


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_resnet18_loads_timm_and_torchvision_files_dropping_fc(tmp_path, source):
    import timm

    torch.manual_seed(7)
    if source == "timm":
        ref = timm.create_model("resnet18", pretrained=False)
    else:
        ref = torchvision.models.resnet18(weights=None)
    _randomise_bn(ref)
    ref.eval()
    assert "fc.weight" in ref.state_dict()
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("resnet18_2d", weights=tmp_path / "resnet18.pth").eval()
    x = _video(4)
    with torch.no_grad():
        ours = model.forward_features(x)
        frames = x[0].transpose(0, 1)  # [T, C, H, W]
        trunk = torch.nn.Sequential(*list(ref.children())[:-2]) if source == "torchvision" else ref.forward_features
        expected = trunk(frames).mean(dim=(2, 3)).unsqueeze(0)
    assert torch.allclose(ours, expected, atol=1e-5)
