"""The teacher's identity in the store (issue 23): what a pretrained member records, and which
recorded teachers a resumed pass accepts.

timm's pretrained weights cannot be downloaded here, so a real timm model built with
`pretrained=False` stands for the weights timm loaded: `pretrained_weights` only reads the
model's tag and state dict. Resume checks run on real `StoreConfig`s, as `dalidr reinforce`
reads them from a store.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from dalidr.augment.recipe import recipe
from dalidr.errors import StoreError
from dalidr.teacher import build_teacher, pretrained_weights, same_weights, tensors_sha256
from dalidr.teacher.ensemble import VIEW_INTERPOLATION
from dalidr.teacher.resume import check_resume
from store.config import MemberIdentity, StoreConfig

HEX = "[0-9a-f]{64}"


def _model(name: str, seed: int, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=classes)


def test_a_pretrained_member_is_its_tag_and_the_digest_of_the_weights_loaded(
        tmp_path: Path) -> None:
    model = _model("test_resnet", 1)
    identity = pretrained_weights("test_resnet", model)
    # No tag asked for: timm's default one; the digest of the state dict as loaded.
    assert identity == (f"pretrained:test_resnet.r160_in1k@sha256:"
                        f"{tensors_sha256(model.state_dict())}")
    assert pretrained_weights("test_resnet.r160_in1k", model) == identity
    # The digest is the checkpoint path's: the same tensors from a file give the same hex.
    path = tmp_path / "same.safetensors"
    save_file(model.state_dict(), str(path))
    member = build_teacher(f"test_resnet@{path}", 3).members[0]
    assert identity.endswith("@" + member.weights)
    # A weight revision under the same tag: another identity, with the same tag.
    with torch.no_grad():
        model.get_parameter("fc.bias").add_(1e-3)
    revised = pretrained_weights("test_resnet", model)
    assert revised != identity and revised.split("@")[0] == identity.split("@")[0]


def test_same_weights_accepts_only_the_previous_release_form_of_the_same_tag() -> None:
    new = pretrained_weights("test_resnet", _model("test_resnet", 1))
    other = pretrained_weights("test_resnet", _model("test_resnet", 2))
    assert same_weights(new, new) and not same_weights(new, other)
    assert same_weights("pretrained:test_resnet.r160_in1k", new)  # a store of the last release
    assert not same_weights("pretrained:test_resnet.other_tag", new)
    assert not same_weights("pretrained:test_resnet", new)  # the tag is part of what was asked
    assert not same_weights(new, "pretrained:test_resnet.r160_in1k")  # never the other way
    digest = new.split("@sha256:")[1]
    assert not same_weights(f"sha256:{digest}", new) and not same_weights("random:1", new)


def _member(weights: str, name: str = "test_resnet") -> MemberIdentity:
    return MemberIdentity(name, weights, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 160,
                          VIEW_INTERPOLATION)


def _config(*members: MemberIdentity, teacher: str = "mean softmax of ...") -> StoreConfig:
    return StoreConfig(recipe("rrc+mix", output_size=32, teacher_size=40), teacher, 7, slots=4,
                       k=3, num_classes=1000, block_size=4, slot_group=2,
                       teacher_members=members)


def test_a_store_of_the_previous_release_resumes_and_other_weights_are_refused() -> None:
    """`pretrained:<tag>` (no digest, written before the digest was recorded) resumes under
    the same tag, whatever the weights now hash to; a recorded digest must match, and a refusal
    names the member that differs."""
    url = "/stores/pretrained"
    weights = pretrained_weights("test_resnet", _model("test_resnet", 1))
    revised = pretrained_weights("test_resnet", _model("test_resnet", 2))
    random = _member("random:5", "test_convnext")
    wanted = _config(random, _member(weights), teacher="this run's description")
    check_resume(url, _config(random, _member("pretrained:test_resnet.r160_in1k")), wanted)
    check_resume(url, _config(random, _member(weights)), wanted)

    with pytest.raises(StoreError, match=rf"{url} was labelled by the teacher .*weights "
                                         rf"pretrained:test_resnet.r160_in1k@sha256:{HEX}.*"
                                         r"member 1 \(test_resnet\) differs in weights"):
        check_resume(url, _config(random, _member(revised)), wanted)
    with pytest.raises(StoreError, match=r"member 1 \(test_resnet\) differs in weights"):
        check_resume(url, _config(random, _member("pretrained:test_resnet.in1k")), wanted)
    with pytest.raises(StoreError, match=r"member 1 \(test_resnet\) differs in input_size"):
        check_resume(url, _config(random, dataclasses.replace(
            _member("pretrained:test_resnet.r160_in1k"), input_size=224)), wanted)
    with pytest.raises(StoreError, match=r"member 0 \(test_convnext\) differs in weights:"):
        check_resume(url, _config(_member("random:6", "test_convnext"), _member(weights)),
                      wanted)
    # The old form excuses the digest only: every other option is still compared.
    with pytest.raises(StoreError, match="other options"):
        check_resume(url, dataclasses.replace(
            _config(random, _member("pretrained:test_resnet.r160_in1k")), seed=8), wanted)
