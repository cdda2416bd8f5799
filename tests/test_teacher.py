"""The teacher ensemble: parsing, per-member views from timm configs, checkpoints, bad input.

Real timm models (the tiny `test_*` architectures and resnet10t) with random weights saved to
local checkpoints; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from dalidr.errors import OptionError
from dalidr.teacher import MemberSpec, build_teacher, load_checkpoint, parse_teacher
from kernels.topk import ensemble_topk


def _save(tmp_path: Path, name: str, classes: int, kind: str = "safetensors") -> Path:
    torch.manual_seed(len(name) + classes)
    model = timm.create_model(name, pretrained=False, num_classes=classes)
    if kind == "safetensors":
        path = tmp_path / f"{name}-{classes}.safetensors"
        save_file(model.state_dict(), str(path))
    else:
        path = tmp_path / f"{name}-{classes}.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                    "epoch": 3}, path)
    return path


def test_parse_teacher() -> None:
    assert parse_teacher("resnet50") == (MemberSpec("resnet50"),)
    assert parse_teacher(" a@x/y.pth , b ,c@z.safetensors") == (
        MemberSpec("a", Path("x/y.pth")), MemberSpec("b"), MemberSpec("c", Path("z.safetensors")))
    for bad, match in (("a,,b", "empty member"), ("", "empty member"), ("a@", "no checkpoint")):
        with pytest.raises(OptionError, match=match):
            parse_teacher(bad)


def test_members_get_their_own_size_and_normalisation(tmp_path: Path) -> None:
    r10 = _save(tmp_path, "resnet10t", 3, kind="torch")
    tr = _save(tmp_path, "test_resnet", 3)
    ensemble = build_teacher(f"resnet10t@{r10},test_resnet@{tr},test_efficientnet", 3,
                             random_seed=0)
    sizes = [m.view.size for m in ensemble.members]
    assert sizes == [176, 160, 160]  # from each model's timm pretrained config
    assert ensemble.members[0].view.mean == pytest.approx((0.485, 0.456, 0.406))
    assert ensemble.members[1].view.mean == pytest.approx((0.5, 0.5, 0.5))
    assert ensemble.members[2].view.std == pytest.approx((0.229, 0.224, 0.225))
    # Three members, three distinct (size, mean, std) views.
    assert len(ensemble.views) == 3 and ensemble.view_of_member == (0, 1, 2)
    # The checkpoint's weights were loaded (DataParallel prefix and wrapper removed).
    state = load_checkpoint(r10)
    got = ensemble.members[0].model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
    text = ensemble.describe()
    assert "resnet10t@resnet10t-3.pth#sha256:" in text and "[176px" in text
    assert text == build_teacher(f"resnet10t@{r10},test_resnet@{tr},test_efficientnet", 3,
                                 random_seed=0).describe()  # stable: in the store's metadata
    # A size override (the recipe's teacher_size) puts everyone at one size; views merge
    # where the normalisation agrees too.
    small = build_teacher(f"test_resnet@{tr},test_resnet@{tr}", 3, size=48)
    assert [v.size for v in small.views] == [48] and small.view_of_member == (0, 0)


def test_a_checkpoint_is_fed_the_normalisation_it_was_trained_with(tmp_path: Path) -> None:
    """test_resnet's timm config says mean/std 0.5, but `dalidr train` normalises with the
    loader's (ImageNet) statistics and records them; a member must see what it trained on."""
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    trained = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(),
                "meta": {"model": "test_resnet", "mean": imagenet[0], "std": imagenet[1]}},
               trained)
    kept = tmp_path / "kept.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v
               for k, v in model.state_dict().items()}, str(kept),
              metadata={"mean": "[0.2, 0.3, 0.4]", "std": "[0.5, 0.6, 0.7]"})
    plain = _save(tmp_path, "test_resnet", 3)  # records nothing: the timm config holds
    ensemble = build_teacher(f"test_resnet@{trained},test_resnet@{kept},test_resnet@{plain}", 3,
                             size=32)
    views = [m.view for m in ensemble.members]
    assert views[0].mean == pytest.approx(imagenet[0]) and views[0].std == pytest.approx(
        imagenet[1])
    assert views[1].mean == pytest.approx((0.2, 0.3, 0.4)) and views[1].std == pytest.approx(
        (0.5, 0.6, 0.7))
    assert views[2].mean == pytest.approx((0.5, 0.5, 0.5))
    # float16 weights load into the float32 model.
    assert ensemble.members[1].model.conv1[0].weight.dtype == torch.float32
    bad = tmp_path / "bad.safetensors"
    save_file(model.state_dict(), str(bad), metadata={"mean": "[1, 2]", "std": "[1, 1, 1]"})
    with pytest.raises(OptionError, match=f"{bad} records mean"):
        build_teacher(f"test_resnet@{bad}", 3)


def test_forward_and_top_k_are_the_mean_softmax(tmp_path: Path) -> None:
    ensemble = build_teacher("test_resnet,test_efficientnet", 3, size=32, random_seed=0)
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        logits = ensemble([x] * len(ensemble.views))
        separate = [m.model(x).softmax(-1) for m in ensemble.members]
    assert logits.shape == (2, 5, 3) and logits.dtype == torch.float32
    classes, probs = ensemble_topk(logits, 2)
    mean = (separate[0] + separate[1]) / 2
    torch.testing.assert_close(probs, mean.gather(1, classes), rtol=1e-5, atol=1e-6)
    assert (probs[:, 0] >= probs[:, 1]).all()


def test_random_weights_are_asked_for_and_seeded_by_seed_and_member() -> None:
    """No checkpoint and no --pretrained: refused, naming the member and the three choices,
    unless random weights are asked for; then they are a function of (seed, member index), so
    every rank and every resume of a pass labels with the same teacher (issue 23)."""
    with pytest.raises(OptionError, match=r"member 'test_resnet' has no checkpoint.*"
                                          r"test_resnet@CHECKPOINT.*--pretrained.*--random-teacher"):
        build_teacher("test_resnet", 3)
    before = torch.random.get_rng_state()
    first = build_teacher("test_resnet,test_resnet", 3, random_seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is untouched
    torch.manual_seed(1234)  # whatever the caller's generator holds
    again = build_teacher("test_resnet,test_resnet", 3, random_seed=7)
    other = build_teacher("test_resnet", 3, random_seed=8)

    def weights(ensemble, member: int) -> dict[str, torch.Tensor]:
        return ensemble.members[member].model.state_dict()

    for member in (0, 1):
        a, b = weights(first, member), weights(again, member)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    name = "conv1.0.weight"
    assert not torch.equal(weights(first, 0)[name], weights(first, 1)[name])  # by member index
    assert not torch.equal(weights(first, 0)[name], weights(other, 0)[name])  # by seed
    with pytest.raises(OptionError, match="--pretrained and --random-teacher"):
        build_teacher("test_resnet", 3, pretrained=True, random_seed=0)


def test_unknown_timm_name_is_refused_with_suggestions() -> None:
    with pytest.raises(OptionError, match=r"'resnet5O' is not a timm model.*resnet50"):
        build_teacher("resnet5O", 3)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, "test_resnet", 3)
    with pytest.raises(OptionError, match=r"does not fit timm architecture 'test_efficientnet'"):
        build_teacher(f"test_efficientnet@{path}", 3)


def test_checkpoint_with_other_classes_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, "test_resnet", 5)
    with pytest.raises(OptionError, match=r"predicts 5 classes but the dataset has 3"):
        build_teacher(f"test_resnet@{path}", 3)


def test_checkpoints_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"weights": torch.zeros(1), "where": Path("/somewhere")}, path)
    with pytest.raises(OptionError, match="weights_only=True"):
        load_checkpoint(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(OptionError, match="not a safetensors file"):
        load_checkpoint(junk)
    with pytest.raises(OptionError, match="does not exist"):
        build_teacher(f"test_resnet@{tmp_path / 'missing.pth'}", 3)


def test_member_identity_names_the_weights_not_the_file(tmp_path: Path) -> None:
    """The store records each member by the digest of the tensors it loaded: the same weights
    as safetensors or as a wrapped torch file give one identity, other weights another; random
    members by the torch seed they were drawn with (pretrained ones: test_teacher_identity)."""
    from dalidr.teacher.ensemble import member_seed, tensors_sha256

    safetensors = _save(tmp_path, "test_resnet", 3)
    pth = _save(tmp_path, "test_resnet", 3, kind="pth")
    one = build_teacher(f"test_resnet@{safetensors}", 3).identity()
    two = build_teacher(f"test_resnet@{pth}", 3).identity()
    assert one == two and one[0].weights.startswith("sha256:") and len(one[0].weights) == 71
    state = load_checkpoint(safetensors)
    assert one[0].weights == f"sha256:{tensors_sha256(state)}"
    state["fc.bias"] = state["fc.bias"] + 1
    assert tensors_sha256(state) != one[0].weights[len("sha256:"):]
    members = build_teacher("test_resnet,test_resnet", 3, random_seed=5).identity()
    assert [m.weights for m in members] == [f"random:{member_seed(5, i)}" for i in range(2)]
    assert (members[0].input_size, members[0].interpolation) == (
        one[0].input_size, "linear-antialias")
