"""CRIS: full-size architecture matches the original, padding is masked, modes train what they say,
and checkpoints in the original format load strictly or fail naming the keys."""

from __future__ import annotations

import pytest
import torch

from trainables.models.cris import build_cris

SOT, EOT = 49406, 49407  # CLIP's start- and end-of-text ids; the CLIP tokenizer also pads with EOT
HEADS = ("neck.", "decoder.", "proj.")


@pytest.fixture(scope="module")
def full_model():
    return build_cris("frozen", "full").eval()


def prompts(batch: int = 2, length: int = 77, real: int = 6, seed: int = 0):
    """CLIP-style ids: SOT, words, EOT, then EOT padding; attention mask 1 on the real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, length), EOT)
    ids[:, 0] = SOT
    ids[:, 1:real - 1] = torch.randint(1, 49000, (batch, real - 2), generator=g)
    mask = torch.zeros(batch, length, dtype=torch.long)
    mask[:, :real] = 1
    return ids, mask


def images(batch: int = 2, size: int = 128, seed: int = 0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_full_size_has_the_original_parameter_count_and_keys(full_model):
    params = dict(full_model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 146_849_122
    split = {part: sum(p.numel() for n, p in params.items() if n.startswith(part + "."))
             for part in ("backbone", "neck", "decoder", "proj")}
    assert split == {"backbone": 104_106_337, "neck": 24_142_336, "decoder": 12_631_552, "proj": 5_968_897}
    keys = full_model.state_dict().keys()
    assert len(keys) == 662
    assert {k.split(".")[0] for k in keys} == {"backbone", "neck", "decoder", "proj"}
    # Names from the original CRIS code, one per kind of module.
    for key in ("backbone.visual.attnpool.connect.0.weight", "backbone.visual.layer4.0.downsample.1.running_var",
                "backbone.transformer.resblocks.11.mlp.c_proj.weight", "backbone.text_projection",
                "backbone.logit_scale", "backbone.token_embedding.weight", "neck.txt_proj.1.running_mean",
                "neck.coordconv.0.conv1.0.weight", "decoder.layers.2.multihead_attn.in_proj_weight",
                "decoder.layers.0.ffn.3.weight", "decoder.norm.bias", "proj.vis.4.bias", "proj.txt.weight"):
        assert key in keys, key


def test_full_size_at_416_gives_26x26_visual_tokens(full_model):
    ids, mask = prompts(batch=1)
    x = images(batch=1, size=416)
    with torch.no_grad():
        feats = full_model.backbone.encode_image(x)
        words, state = full_model.backbone.encode_text(ids, mask)
        fq = full_model.neck(feats, state)
        logits = full_model(x, ids, mask)
    assert [tuple(f.shape) for f in feats] == [(1, 512, 52, 52), (1, 1024, 26, 26), (1, 1024, 13, 13)]
    assert tuple(words.shape) == (1, 77, 512) and tuple(state.shape) == (1, 1024)
    assert tuple(fq.shape) == (1, 512, 26, 26)
    assert tuple(logits.shape) == (1, 1, 416, 416) and torch.isfinite(logits).all()


def test_small_forward_returns_logits_at_the_input_size():
    model = build_cris("frozen", "small").eval()
    ids, mask = prompts(batch=3, length=32)
    with torch.no_grad():
        assert tuple(model(images(batch=3), ids, mask).shape) == (3, 1, 128, 128)


def test_padded_tokens_are_masked_and_real_tokens_count():
    model = build_cris("frozen", "small").eval()
    x = images()
    ids, mask = prompts(real=6)
    other_padding = ids.clone()
    other_padding[:, 6:] = torch.randint(1, 49000, other_padding[:, 6:].shape)
    other_word = ids.clone()
    other_word[:, 2] += 1
    with torch.no_grad():
        base = model(x, ids, mask)
        words, _ = model.backbone.encode_text(ids, mask)
        words_other, _ = model.backbone.encode_text(other_padding, mask)
        # The padded positions do carry different features into the decoder ...
        assert not torch.allclose(words[:, 6:], words_other[:, 6:])
        # ... and the key padding mask keeps them out.
        torch.testing.assert_close(model(x, other_padding, mask), base, rtol=0, atol=1e-6)
        assert not torch.allclose(model(x, other_word, mask), base)


def one_step(model):
    """One AdamW step on a small batch; returns the names of parameters and buffers that changed."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    ids, mask = prompts()
    loss = model(images(), ids, mask).sigmoid().mean()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def test_frozen_trains_neck_decoder_and_projector_only():
    model = build_cris("frozen", "small")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    changed = one_step(model)
    assert not [k for k in changed if k.startswith("backbone.")]  # weights and BN statistics
    for head in HEADS:
        assert any(k.startswith(head) for k in changed), head


def test_finetune_trains_both_clip_towers_too():
    model = build_cris("finetune", "small")
    changed = one_step(model)
    for part in ("backbone.visual.", "backbone.transformer.", "backbone.token_embedding.", *HEADS):
        assert any(k.startswith(part) for k in changed), part


def save_original_format(model, path):
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)


def test_checkpoint_in_the_original_format_round_trips(tmp_path):
    source = build_cris("finetune", "small")
    one_step(source)  # move BN statistics off their defaults too
    path = tmp_path / "cris.pth"
    save_original_format(source, path)
    # Same mode as the source: frozen towers take another attention kernel, equal only to ~1e-6.
    loaded = build_cris("finetune", "small", weights=str(path)).eval()
    fresh = build_cris("finetune", "small").eval()
    ids, mask = prompts()
    x = images()
    with torch.no_grad():
        expected = source.eval()(x, ids, mask)
        assert torch.equal(loaded(x, ids, mask), expected)
        assert not torch.allclose(fresh(x, ids, mask), expected)


def test_mismatched_checkpoint_fails_naming_the_keys(tmp_path):
    state = {"module." + k: v for k, v in build_cris("frozen", "small").state_dict().items()}
    state["module.proj.text.weight"] = state.pop("module.proj.txt.weight")
    del state["module.neck.aggr.0.weight"]
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError) as error:
        build_cris("frozen", "small", weights=str(path))
    message = str(error.value)
    assert "2 missing" in message and "1 unexpected" in message
    for key in ("proj.txt.weight", "neck.aggr.0.weight", "proj.text.weight"):
        assert key in message


def test_unknown_weights_are_refused():
    with pytest.raises(ValueError, match="unrecognised"):
        build_cris("frozen", "small", weights="somewhere/else")
