"""BiomedCLIPSeg(-D): offline architecture, which parameters train per mode, save/reload, tokenizer."""

import pytest
import torch
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

from trainables.models.biomedclipseg import (
    VARIANTS,
    biomed_tokenizer,
    biomedclipseg_spec,
    build_biomedclipseg,
    save_biomedclipseg,
)

BIOMEDCLIP_PARAMETERS = 195_902_721  # MODEL-FACTS: BiomedCLIP (ViT-B/16 + PubMedBERT)
CLIPSEG_DECODER_PARAMETERS = 1_127_009  # MODEL-FACTS: CLIPSeg rd64-refined's decoder
PROMPT = "one small pink round polyp, located in left of the image"


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def batch(size: int = 128, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens = biomed_tokenizer(None)([PROMPT, "tumor"][:n], padding="max_length", max_length=256,
                                    truncation=True, return_tensors="pt")
    pixels = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return pixels, tokens["input_ids"], tokens["attention_mask"]


def test_full_size_parameter_count_matches_the_study():
    model = build_biomedclipseg("frozen", "full")
    total = count(model)
    print(f"BiomedCLIPSeg full: {total:,} parameters (towers {count(model.clip):,}, decoder {count(model.decoder):,})")
    assert abs(total - 197.03e6) / 197.03e6 < 1e-3
    assert count(model.clip) == BIOMEDCLIP_PARAMETERS and count(model.decoder) == CLIPSEG_DECODER_PARAMETERS
    trunk = model.clip.visual.trunk
    assert trunk.patch_embed.patch_size == (16, 16) and trunk.patch_embed.img_size == (224, 224)
    assert model.clip.text.transformer.config.vocab_size == 30522 and model.spec.extract_blocks == (4, 7, 10)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", [1, 2])
def test_small_forward_gives_logits_at_the_input_size(variant, n):
    model = build_biomedclipseg("frozen", "small", variant=variant)
    assert model(*batch(128, n)).shape == (n, 1, 128, 128)


def train_one_step(model: torch.nn.Module) -> dict[str, bool]:
    """Which parameters one AdamW step changed, by name."""
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    logits = model(*batch())
    torch.nn.functional.binary_cross_entropy_with_logits(logits, (torch.rand_like(logits) > 0.5).float()).backward()
    optimizer.step()
    return {n: not torch.equal(before[n], p) for n, p in model.named_parameters()}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", ["frozen", "zeroshot"])
def test_frozen_trains_the_decoder_only(variant, mode):
    model = build_biomedclipseg(mode, "small", variant=variant)
    changed = train_one_step(model)
    assert all(changed[n] for n in changed if n.startswith("decoder."))
    assert not any(changed[n] for n in changed if n.startswith("clip."))
    assert all(p.grad is None for p in model.clip.parameters())
    assert not model.clip.training and model.decoder.training  # frozen towers stay deterministic


@pytest.mark.parametrize("variant", VARIANTS)
def test_finetune_trains_both_towers_too(variant):
    model = build_biomedclipseg("finetune", "small", variant=variant)
    changed = train_one_step(model)
    assert all(changed[n] for n in changed if n.startswith("decoder."))
    assert changed["clip.visual.trunk.patch_embed.proj.weight"] and changed["clip.visual.trunk.blocks.4.mlp.fc2.weight"]
    assert changed["clip.text.transformer.embeddings.word_embeddings.weight"]
    assert changed["clip.text.transformer.encoder.layer.1.output.dense.weight"] and changed["clip.text.proj.2.weight"]
    # Blocks after the last extracted one, the final norm and the image projection feed nothing.
    assert not changed["clip.visual.trunk.blocks.5.mlp.fc2.weight"] and not changed["clip.visual.head.proj.weight"]


def test_saved_folder_reloads_with_identical_outputs(tmp_path):
    model = build_biomedclipseg("frozen", "small", variant="biomedclipseg_d").eval()
    train_one_step(model)  # weights that differ from any fresh init
    model.eval()
    inputs = batch()
    with torch.no_grad():
        expected = model(*inputs)
    save_biomedclipseg(model, str(tmp_path), tokenizer=biomed_tokenizer(None))
    reloaded = build_biomedclipseg("frozen", "small", weights=str(tmp_path), variant="biomedclipseg_d").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(*inputs), expected)
    assert biomed_tokenizer(str(tmp_path)).get_vocab() == biomed_tokenizer(None).get_vocab()

    # A plain torch state dict in the folder loads too (weights_only), and a wrong variant is refused.
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with torch.no_grad():
        assert torch.equal(build_biomedclipseg("finetune", "small", weights=str(tmp_path),
                                               variant="biomedclipseg_d").eval()(*inputs), expected)
    with pytest.raises(ValueError, match="variant"):
        build_biomedclipseg("frozen", "small", weights=str(tmp_path), variant="biomedclipseg")


def test_d_variant_starts_from_clipseg_decoder(tmp_path):
    spec = biomedclipseg_spec("small", "biomedclipseg_d")
    clipseg = CLIPSegForImageSegmentation(CLIPSegConfig(**spec.decoder))
    clipseg.save_pretrained(tmp_path)
    model = build_biomedclipseg("frozen", "small", variant="biomedclipseg_d", decoder_weights=str(tmp_path))
    for name, tensor in clipseg.decoder.state_dict().items():
        assert torch.equal(model.decoder.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="biomedclipseg_d"):
        build_biomedclipseg("frozen", "small", variant="biomedclipseg", decoder_weights=str(tmp_path))


def test_unknown_mode_variant_or_size_is_refused():
    for kwargs in ({"mode": "train", "size": "small"}, {"mode": "frozen", "size": "tiny"},
                   {"mode": "frozen", "size": "small", "variant": "biomedclipseg_x"}):
        with pytest.raises(ValueError):
            build_biomedclipseg(**kwargs)


def test_tokenizer_produces_real_ids_that_decode_back():
    tokenizer = biomed_tokenizer(None)
    encoded = tokenizer(PROMPT, padding="max_length", max_length=256)
    ids = encoded["input_ids"]
    assert len(ids) == 256 and tokenizer.model_max_length == 256 and tokenizer.pad_token_id == 0
    words = [i for i in ids if i not in tokenizer.all_special_ids]
    assert len(words) == 12 and tokenizer.unk_token_id not in words  # 11 words and the comma, all whole
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPT
    # Words outside the test vocabulary fall back to characters, never to [UNK].
    assert tokenizer.unk_token_id not in tokenizer("hyperplastic adenoma")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id == 101  # BERT's layout, as in BiomedBERT's vocab.txt
