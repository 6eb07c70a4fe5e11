"""BiomedCLIPSeg and BiomedCLIPSeg-D (Poudel et al., 2024): BiomedCLIP's towers + CLIPSeg's decoder.

BiomedCLIP (a timm ViT-B/16 and a PubMedBERT text tower) is built through open_clip from a config
folder this module writes itself, so the architecture builds offline with random weights. The two
variants share the architecture; they differ only in where the decoder starts: BiomedCLIPSeg trains
a randomly initialised CLIPSeg decoder, BiomedCLIPSeg-D ("D" for decoder) starts from the decoder of
the pretrained CLIPSeg (``CIDAS/clipseg-rd64-refined``), as the study's ``rand_init_decoder: false``.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import asdict, dataclass

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import BertConfig, BertTokenizerFast, CLIPSegConfig
from transformers.models.clipseg.modeling_clipseg import CLIPSegDecoder, CLIPSegForImageSegmentation

from trainables.models.segmenter import EncoderDecoderSegmenter

BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDBERT_HUB_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
CLIPSEG_HUB_ID = "CIDAS/clipseg-rd64-refined"
VARIANTS = ("biomedclipseg", "biomedclipseg_d")
MODES = ("frozen", "finetune", "zeroshot")
CONTEXT_LENGTH = 256
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME, WEIGHTS_NAME, TORCH_WEIGHTS_NAME = "biomedclipseg.json", "model.safetensors", "pytorch_model.bin"


@dataclass(frozen=True)
class BiomedCLIPSegSpec:
    """Everything that fixes the architecture; saved beside the weights so a folder rebuilds itself."""

    size: str
    variant: str
    image_size: int
    extract_blocks: tuple[int, ...]  # 0-based ViT blocks whose outputs feed the decoder
    open_clip: dict  # open_clip model_cfg; the text tower's folder is filled in at build time
    bert: dict  # BertConfig keyword arguments
    decoder: dict  # CLIPSegConfig keyword arguments


def _open_clip_cfg(embed_dim: int, timm_model: str, image_size: int) -> dict:
    # Mirrors the hub's open_clip_config.json of BiomedCLIP (MODEL-FACTS, "BiomedCLIP, offline").
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_name": timm_model, "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": image_size},
        "text_cfg": {"hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": CONTEXT_LENGTH},
    }


def biomedclipseg_spec(size: str, variant: str = "biomedclipseg") -> BiomedCLIPSegSpec:
    if variant not in VARIANTS:
        raise ValueError(f"unknown BiomedCLIPSeg variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    if size == "full":
        return BiomedCLIPSegSpec(
            size, variant, 224,
            # The study indexed block outputs with CLIPSeg's hidden-state indices 3, 6, 9 + 1, which
            # skips the embeddings: blocks 5, 8, 11 (1-based), one later than CLIPSeg's 4, 7, 10.
            extract_blocks=(4, 7, 10),
            open_clip=_open_clip_cfg(512, "vit_base_patch16_224", 224),
            bert={"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "max_position_embeddings": 512},
            # CLIPSeg rd64-refined's decoder: ViT-B/16 width 768, projection 512, reduce_dim 64.
            decoder={"vision_config": {"patch_size": 16}, "reduce_dim": 64,
                     "use_complex_transposed_convolution": True},
        )
    if size == "small":
        # timm's test_vit: patch 16, width 64, 6 blocks, class token first, positions resampled to
        # the input, so 128 pixels give an 8x8 grid and the decoder upsamples it by 16 as in full.
        return BiomedCLIPSegSpec(
            size, variant, 128,
            extract_blocks=(2, 3, 4),  # blocks 3, 4, 5 of 6, the last one unused as in full
            open_clip=_open_clip_cfg(64, "test_vit", 128),
            # The full vocabulary keeps every tokenizer's ids in range, real or test.
            bert={"vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 128, "max_position_embeddings": CONTEXT_LENGTH},
            decoder={"text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                     "num_attention_heads": 2, "max_position_embeddings": 32},
                     "vision_config": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 6,
                                       "num_attention_heads": 2, "patch_size": 16, "image_size": 128},
                     "projection_dim": 64, "reduce_dim": 32, "use_complex_transposed_convolution": True,
                     "extract_layers": [1, 2, 3], "decoder_num_attention_heads": 2,
                     "decoder_intermediate_size": 128},
        )
    raise ValueError(f"unknown BiomedCLIPSeg size {size!r}")


def write_open_clip_folder(root: str, spec: BiomedCLIPSegSpec) -> str:
    """Write BiomedCLIP's open_clip config and its BERT config under ``root``; return ``local-dir:root``."""
    text_dir = os.path.abspath(os.path.join(root, "text"))
    BertConfig(**spec.bert).save_pretrained(text_dir)
    model_cfg = copy.deepcopy(spec.open_clip)
    model_cfg["text_cfg"].update(hf_model_name=text_dir, hf_tokenizer_name=text_dir)
    with open(os.path.join(root, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD}}, f, indent=1)
    return f"local-dir:{root}"


def _build_towers(spec: BiomedCLIPSegSpec) -> nn.Module:
    # A fresh folder each time: open_clip would load any checkpoint it finds beside the config.
    with tempfile.TemporaryDirectory(prefix="biomedclip_config_") as root:
        return open_clip.create_model(write_open_clip_folder(root, spec), pretrained_text=False)


class BiomedCLIPSeg(EncoderDecoderSegmenter):
    """BiomedCLIP's image and text towers feeding a CLIPSeg decoder; logits at the input size.

    ``frozen`` and ``zeroshot`` run both towers without gradients and keep them in eval mode (so
    BERT's dropout does not perturb the features; the study's frozen BERT kept it on), training the
    decoder only, as the study did. ``finetune`` trains everything.
    """

    def __init__(self, spec: BiomedCLIPSegSpec, clip: nn.Module, decoder: CLIPSegDecoder, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
        if clip.visual.trunk.embed_dim != decoder.config.vision_config.hidden_size:
            raise ValueError("the decoder's vision width must match the ViT's")
        if clip.text.output_dim != decoder.config.projection_dim:
            raise ValueError("the decoder's projection_dim must match BiomedCLIP's embedding size")
        self.spec, self.mode = spec, mode
        self.clip, self.decoder = clip, decoder
        clip.requires_grad_(mode == "finetune")

    def train(self, mode: bool = True) -> BiomedCLIPSeg:
        super().train(mode)
        if self.mode != "finetune":
            self.clip.eval()
        return self

    def image_activations(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the extract blocks, (B, 1 + grid tokens, width) each, class token first."""
        taken = self.clip.visual.trunk.forward_intermediates(
            pixel_values, indices=list(self.spec.extract_blocks), return_prefix_tokens=True,
            stop_early=True, output_fmt="NLC", intermediates_only=True)
        return [torch.cat([prefix, tokens], dim=1) for tokens, prefix in taken]

    def text_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """BiomedCLIP's projected text embedding (CLS pooled), honouring the given padding mask."""
        text = self.clip.text
        hidden = text.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return text.proj(text.pooler(hidden, attention_mask))

    def encode_image(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"act{k}": a for k, a in enumerate(self.image_activations(pixel_values))}

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": self.text_embedding(input_ids, attention_mask)}

    def decode(self, image: dict[str, torch.Tensor], text: dict[str, torch.Tensor],
               size: tuple[int, int]) -> torch.Tensor:
        """Logits (B, 1, *size) from the towers' outputs."""
        activations = [image[f"act{k}"] for k in range(len(self.spec.extract_blocks))]
        logits = self.decoder(activations, text["embedding"]).logits
        # The decoder squeezes the channel axis, and with it the batch axis of a batch of one.
        logits = logits.reshape(activations[0].shape[0], 1, *logits.shape[-2:])
        if logits.shape[-2:] != tuple(size):  # inputs that are not a multiple of the patch
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits


def _assemble(spec: BiomedCLIPSegSpec, mode: str) -> BiomedCLIPSeg:
    # Built alone, the decoder's layers would copy a config with no attention implementation set.
    decoder = CLIPSegDecoder(CLIPSegConfig(**spec.decoder, attn_implementation="sdpa"))
    return BiomedCLIPSeg(spec, _build_towers(spec), decoder, mode)


def build_biomedclipseg(mode: str, size: str, weights: str | None = None, variant: str = "biomedclipseg",
                        decoder_weights: str | None = None) -> BiomedCLIPSeg:
    """Build BiomedCLIPSeg(-D).

    ``weights``: None for random towers; a hub id of BiomedCLIP (``BIOMEDCLIP_HUB_ID``, with or
    without ``hf-hub:``; needs the network) for pretrained towers; or a folder written by
    ``save_biomedclipseg``, which restores the whole model. ``decoder_weights`` (-D only): a CLIPSeg
    hub id or folder whose decoder -D starts from; with pretrained towers it defaults to
    ``CLIPSEG_HUB_ID``. Offline with random towers both variants start from a random decoder.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    if decoder_weights and variant != "biomedclipseg_d":
        raise ValueError("only biomedclipseg_d starts from CLIPSeg's pretrained decoder")
    if weights and os.path.isdir(weights):
        if decoder_weights:
            raise ValueError("a saved folder restores its own decoder; decoder_weights does not apply")
        return load_biomedclipseg(weights, mode, size, variant)
    model = _assemble(biomedclipseg_spec(size, variant), mode)
    if weights:
        if size != "full":
            raise ValueError("pretrained BiomedCLIP towers exist at size 'full' only")
        pretrained = open_clip.create_model("hf-hub:" + weights.removeprefix("hf-hub:"))
        model.clip.load_state_dict(pretrained.state_dict())
        decoder_weights = decoder_weights or (CLIPSEG_HUB_ID if variant == "biomedclipseg_d" else None)
    if decoder_weights:
        clipseg = CLIPSegForImageSegmentation.from_pretrained(decoder_weights)
        model.decoder.load_state_dict(clipseg.decoder.state_dict())
    return model


def save_biomedclipseg(model: BiomedCLIPSeg, folder: str, tokenizer: BertTokenizerFast | None = None) -> None:
    """Write the architecture spec and the weights (safetensors), and the tokenizer's vocab.txt if given."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(asdict(model.spec), f, indent=1)
    save_model(model, os.path.join(folder, WEIGHTS_NAME))
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        with open(os.path.join(folder, "vocab.txt"), "w") as f:
            f.write("".join(f"{token}\n" for token, _ in vocab))


def load_biomedclipseg(folder: str, mode: str, size: str | None = None,
                       variant: str | None = None) -> BiomedCLIPSeg:
    """Rebuild a model from a folder written by ``save_biomedclipseg`` (or holding a torch state dict
    as ``pytorch_model.bin``) and load its weights strictly. ``size``/``variant``, when given, must match."""
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        saved = json.load(f)
    spec = BiomedCLIPSegSpec(**{**saved, "extract_blocks": tuple(saved["extract_blocks"])})
    for name, wanted in (("size", size), ("variant", variant)):
        if wanted is not None and wanted != getattr(spec, name):
            raise ValueError(f"{folder} holds a {getattr(spec, name)!r} model, not {name} {wanted!r}")
    model = _assemble(spec, mode)
    path = os.path.join(folder, WEIGHTS_NAME)
    if os.path.exists(path):
        missing, unexpected = load_model(model, path, strict=False)
    else:
        state = torch.load(os.path.join(folder, TORCH_WEIGHTS_NAME), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights in {folder} do not fit: missing {sorted(missing)}, "
                           f"unexpected {sorted(unexpected)}")
    return model


# A stand-in WordPiece vocabulary for offline tests: BERT's special-token layout, single characters
# and their "##" continuations (so no word is ever unknown) and whole words of the study's prompts.
_PROMPT_WORDS = """
a an the of in on at with which is are and or no not from to by its as located image images
polyp polyps tumor tumors tumour benign malignant normal breast ultrasound regular irregular shaped
shape left right top bottom center centre middle upper lower side one two three four five six seven
eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty
thirty forty fifty sixty seventy eighty ninety hundred zero tiny small medium large big pink red
white black brown dark yellow orange green blue purple gray grey tan round oval circle circular
triangle triangular square rectangle rectangular elongated ellipse projecting growth tissue tissues
often bumpy flesh rectum lump lining colon resemble mushroom like stalks abnormal mucuos mucous
membrane skin melanoma spot speckles texture sore rough wound foot ulcer toe toes abnormality open
lesion heart cardiac left ventricular ventricle cavity myocardium atrium chamber view end diastole
systole cycle year old male female man woman quality good poor chest xray x ray frontal lateral
lung lungs pleural effusion pneumothorax edema consolidation atelectasis cardiomegaly enlarged
cardiomediastinum opacity airspace fracture support devices pneumonia findings present finding
segmentation mask region area organ liver kidney scan ct mri
"""


def _test_vocab() -> dict[str, int]:
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = [*specials, *chars, *(f"##{c}" for c in chars), *dict.fromkeys(_PROMPT_WORDS.split())]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def _read_vocab(path: str) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def _find_vocab(weights: str | None) -> str | None:
    if not weights:
        return None
    if os.path.isdir(weights):
        path = os.path.join(weights, "vocab.txt")
        return path if os.path.isfile(path) else None
    # BiomedCLIP's repo names BiomedBERT's as its tokenizer; look in the local cache only.
    for repo in (weights.removeprefix("hf-hub:"), BIOMEDBERT_HUB_ID):
        path = try_to_load_from_cache(repo, "vocab.txt")
        if isinstance(path, str):
            return path
    return None


def biomed_tokenizer(weights: str | None = None) -> BertTokenizerFast:
    """BiomedBERT's uncased WordPiece tokenizer (context 256) when ``weights`` (a folder, or a hub id
    whose snapshot is in the local cache) has a vocab.txt; else one over a small built-in test vocabulary."""
    path = _find_vocab(weights)
    # transformers v5 takes the vocabulary itself: vocab_file= would be silently ignored.
    vocab = _read_vocab(path) if path else _test_vocab()
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=CONTEXT_LENGTH)
