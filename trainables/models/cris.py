"""CRIS (Wang et al., CVPR 2022): CLIP RN50 kept spatial, an FPN neck, a vision-language decoder
and a projector of per-sample dynamic kernels, written from the paper and MODEL-FACTS.

Module names follow the original CRIS code, so its checkpoints (``module.backbone.*``,
``module.neck.*``, ``module.decoder.*``, ``module.proj.*``) load strictly. The backbone is a thin
tree over open_clip's modules: ``visual`` is open_clip's ModifiedResNet with its attention pool
replaced by the spatial one below (which adds ``connect``), and the text side is open_clip's
``transformer``, ``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``
and ``logit_scale`` moved over unchanged. Those names are OpenAI CLIP's own, so no key is renamed.

Padding is masked from the attention mask. The official CRIS pads with 0 and masks ``ids == 0``,
which is right there; the study's code kept that test while its tokenizer padded with 49407, so it
masked nothing: ``mask_padding=False`` does the same (docs/fidelity.md). The sentence state is
taken at the last real token (the same token as ``ids.argmax()`` when padding is 49407). Logits go
back to the input size bilinear; the study's code used bicubic with ``align_corners=True``
(``upsample="bicubic"``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from open_clip.modified_resnet import AttentionPool2d
from open_clip.pretrained import download_pretrained, get_pretrained_cfg
from torch import nn

from trainables.models.segmenter import EncoderDecoderSegmenter


@dataclass(frozen=True)
class CRISConfig:
    embed_dim: int  # CLIP joint width: C5 channels and the sentence state
    vision_layers: tuple[int, int, int, int]
    vision_width: int  # ModifiedResNet stem width; C3 = 8x, C4 = 16x this
    pos_image_size: int  # the attention pool's positional grid is pos_image_size // 32 square
    text_width: int
    text_heads: int
    text_layers: int
    fpn_out: tuple[int, int, int]  # (C3 projection, decoder width, C5 projection)
    num_layers: int
    num_heads: int
    dim_ffn: int
    dropout: float = 0.1
    context_length: int = 77  # word_len: the longest token sequence the text tower takes
    vocab_size: int = 49408

    def __post_init__(self):
        # The decoder's cross-attention projects words with its own width (kdim = d_model).
        if self.text_width != self.d_model:
            raise ValueError(f"text width {self.text_width} must equal decoder width {self.d_model}")

    @property
    def d_model(self) -> int:
        return self.fpn_out[1]

    @property
    def fpn_in(self) -> tuple[int, int, int]:
        return (self.vision_width * 8, self.vision_width * 16, self.embed_dim)


def cris_full_config() -> CRISConfig:
    """CRIS on OpenAI CLIP RN50, word_len 77, as in the original refcoco/cris_r50.yaml."""
    return CRISConfig(embed_dim=1024, vision_layers=(3, 4, 6, 3), vision_width=64, pos_image_size=224,
                      text_width=512, text_heads=8, text_layers=12, fpn_out=(256, 512, 1024),
                      num_layers=3, num_heads=8, dim_ffn=2048)


def cris_small_config() -> CRISConfig:
    """The same architecture at widths that train a step in well under a second on a CPU."""
    return CRISConfig(embed_dim=64, vision_layers=(1, 1, 1, 1), vision_width=8, pos_image_size=128,
                      text_width=64, text_heads=2, text_layers=1, fpn_out=(32, 64, 64),
                      num_layers=1, num_heads=2, dim_ffn=128)


def cris_config(size: str) -> CRISConfig:
    if size == "full":
        return cris_full_config()
    if size == "small":
        return cris_small_config()
    raise ValueError(f"unknown CRIS size {size!r}")


# --- backbone ---------------------------------------------------------------------------------


class SpatialAttentionPool(AttentionPool2d):
    """CLIP's attention pool applied at every position: no class token, positional embedding
    resized bicubically to the feature map, plus a residual 1x1 conv + BN branch, then ReLU."""

    def __init__(self, grid: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__(grid, embed_dim, num_heads, output_dim)
        self.grid = grid
        self.connect = nn.Sequential(nn.Conv2d(embed_dim, output_dim, 1, bias=False), nn.BatchNorm2d(output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        residual = self.connect(x)
        pos = self.positional_embedding[1:].T.reshape(1, c, self.grid, self.grid)  # drop the class slot
        pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        tokens = (x + pos.to(x.dtype)).flatten(2).transpose(1, 2)  # (B, HW, C)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, h * w, self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(tokens)), heads(self.k_proj(tokens)),
                                             heads(self.v_proj(tokens)))
        out = self.c_proj(out.transpose(1, 2).reshape(b, h * w, c))
        return F.relu(out.transpose(1, 2).reshape(b, -1, h, w) + residual)


class CLIPBackbone(nn.Module):
    """OpenAI CLIP's module layout over open_clip's modules: image -> (C3, C4, C5), text -> words, state."""

    def __init__(self, cfg: CRISConfig):
        super().__init__()
        clip = open_clip.model.CLIP(
            cfg.embed_dim,
            CLIPVisionCfg(layers=cfg.vision_layers, width=cfg.vision_width, image_size=cfg.pos_image_size),
            CLIPTextCfg(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.text_width,
                        heads=cfg.text_heads, layers=cfg.text_layers),
            quick_gelu=True,  # what OpenAI's CLIP was trained with
        )
        pooled = clip.visual.attnpool
        spatial = SpatialAttentionPool(cfg.pos_image_size // 32, pooled.k_proj.in_features, pooled.num_heads,
                                       cfg.embed_dim)
        spatial.load_state_dict(pooled.state_dict(), strict=False)  # keep open_clip's initialisation
        clip.visual.attnpool = spatial
        self.visual = clip.visual
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)  # causal

    def encode_image(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self.visual
        c3 = v.layer2(v.layer1(v.stem(x)))
        c4 = v.layer3(c3)
        return c3, c4, v.attnpool(v.layer4(c4))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        words = self.ln_final(x)
        # The end-of-text token is the last real one; argmax over ids breaks when padding is not 0.
        eot = (attention_mask.sum(1).long() - 1).clamp(min=0)
        state = words[torch.arange(words.shape[0], device=words.device), eot] @ self.text_projection
        return words, state


# --- neck -------------------------------------------------------------------------------------


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class CoordConv(nn.Module):
    """A conv that also sees x and y in [-1, 1] as two extra channels."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3):
        super().__init__()
        self.conv1 = conv_bn_relu(c_in + 2, c_out, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype),
                                torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype), indexing="ij")
        coords = torch.stack([xs, ys]).expand(b, -1, -1, -1)
        return self.conv1(torch.cat([x, coords], dim=1))


class FPN(nn.Module):
    """Sentence-gated C5, top-down fusion with C4 and C3, aggregated at C4's stride (1/16)."""

    def __init__(self, c_in: tuple[int, int, int], c_out: tuple[int, int, int]):
        super().__init__()
        (in3, in4, in5), (out3, out4, out5) = c_in, c_out
        self.txt_proj = nn.Sequential(nn.Linear(in5, out5, bias=False), nn.BatchNorm1d(out5), nn.ReLU(inplace=True))
        self.f1_v_proj = conv_bn_relu(in5, out5)
        self.norm_layer = nn.Sequential(nn.BatchNorm2d(out5), nn.ReLU(inplace=True))
        self.f2_v_proj = conv_bn_relu(in4, out4, 3)
        self.f2_cat = conv_bn_relu(out5 + out4, out4)
        self.f3_v_proj = conv_bn_relu(in3, out3, 3)
        self.f3_cat = conv_bn_relu(out3 + out4, out4)
        self.f4_proj5 = conv_bn_relu(out5, out4, 3)
        self.f4_proj4 = conv_bn_relu(out4, out4, 3)
        self.f4_proj3 = conv_bn_relu(out4, out4, 3)
        self.aggr = conv_bn_relu(3 * out4, out4)
        self.coordconv = nn.Sequential(CoordConv(out4, out4, 3), conv_bn_relu(out4, out4, 3))

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
        c3, c4, c5 = feats
        f5 = self.norm_layer(self.f1_v_proj(c5) * self.txt_proj(state)[:, :, None, None])
        size4 = c4.shape[-2:]
        f4 = self.f2_cat(torch.cat([self.f2_v_proj(c4), F.interpolate(f5, size=size4, mode="bilinear")], 1))
        f3 = F.avg_pool2d(self.f3_v_proj(c3), 2)
        f3 = self.f3_cat(torch.cat([f3, f4], 1))
        fq5 = F.interpolate(self.f4_proj5(f5), size=size4, mode="bilinear")
        fq = self.aggr(torch.cat([self.f4_proj3(f3), self.f4_proj4(f4), fq5], 1))
        return self.coordconv(fq)


# --- decoder ----------------------------------------------------------------------------------


def _sine(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Interleaved sin/cos of ``positions`` (N,) at ``dim // 2`` frequencies: (N, dim)."""
    freq = torch.exp(torch.arange(0, dim, 2, device=positions.device) * -(math.log(10000.0) / dim))
    angles = positions[:, None] * freq
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


def sine_1d(length: int, dim: int, device: torch.device) -> torch.Tensor:
    return _sine(torch.arange(length, device=device, dtype=torch.float32), dim)


def sine_2d(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """First half of the channels encode the column, second half the row: (H*W, dim), row-major."""
    half = dim // 2
    cols = _sine(torch.arange(width, device=device, dtype=torch.float32), half)
    rows = _sine(torch.arange(height, device=device, dtype=torch.float32), half)
    grid = torch.cat([cols[None].expand(height, -1, -1), rows[:, None].expand(-1, width, -1)], dim=-1)
    return grid.reshape(height * width, dim)


class DecoderLayer(nn.Module):
    """Pre-norm: self-attention over visual tokens, cross-attention to words, FFN; each attention
    output gets its own LayerNorm before the residual add."""

    def __init__(self, d_model: int, nhead: int, dim_ffn: int, dropout: float):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_ffn), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.LayerNorm(dim_ffn), nn.Linear(dim_ffn, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, vis: torch.Tensor, words: torch.Tensor, vis_pos: torch.Tensor, word_pos: torch.Tensor,
                pad_mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(vis)
        q = x + vis_pos
        x = self.self_attn(q, q, x, need_weights=False)[0]
        vis = vis + self.dropout1(self.self_attn_norm(x))
        x = self.norm2(vis)
        x = self.multihead_attn(x + vis_pos, words + word_pos, words, key_padding_mask=pad_mask,
                                need_weights=False)[0]
        vis = vis + self.dropout2(self.cross_attn_norm(x))
        return vis + self.dropout3(self.ffn(self.norm3(vis)))


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_ffn: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, nhead, dim_ffn, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, vis: torch.Tensor, words: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """vis (B, C, H, W), words (B, L, C), pad_mask (B, L) True at padding -> (B, C, H, W)."""
        b, c, h, w = vis.shape
        vis_pos = sine_2d(h, w, c, vis.device).to(vis.dtype)
        word_pos = sine_1d(words.shape[1], words.shape[2], vis.device).to(words.dtype)
        x = vis.flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x, words, vis_pos, word_pos, pad_mask)
        return self.norm(x).transpose(1, 2).reshape(b, c, h, w)


# --- projector --------------------------------------------------------------------------------


class Projector(nn.Module):
    """Upsample visual features x4, then convolve each sample with a 3x3 kernel and bias made from
    its own sentence state (one grouped convolution over the batch)."""

    def __init__(self, word_dim: int, in_dim: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.vis = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"), conv_bn_relu(in_dim * 2, in_dim * 2, 3),
            nn.Upsample(scale_factor=2, mode="bilinear"), conv_bn_relu(in_dim * 2, in_dim, 3),
            nn.Conv2d(in_dim, in_dim, 1))
        self.txt = nn.Linear(word_dim, in_dim * kernel_size * kernel_size + 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        x = self.vis(x)
        b, c, h, w = x.shape
        params = self.txt(state)
        weight = params[:, :-1].reshape(b, c, self.kernel_size, self.kernel_size).to(x.dtype)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, params[:, -1].to(x.dtype),
                       padding=self.kernel_size // 2, groups=b)
        return out.reshape(b, 1, h, w)


# --- model ------------------------------------------------------------------------------------


class CRIS(EncoderDecoderSegmenter):
    """``forward(pixel_values, input_ids, attention_mask) -> logits (B, 1, H, W)`` at the input size.

    ``frozen`` and ``zeroshot`` run both CLIP towers without gradients and keep their BatchNorm
    statistics fixed; ``finetune`` trains everything.
    """

    def __init__(self, cfg: CRISConfig, mode: str = "frozen", mask_padding: bool = True, upsample: str = "bilinear"):
        super().__init__()
        if upsample not in ("bilinear", "bicubic"):
            raise ValueError(f"unknown upsample {upsample!r}: expected bilinear or bicubic")
        self.cfg, self.mode, self.mask_padding, self.upsample = cfg, mode, mask_padding, upsample
        self.backbone = CLIPBackbone(cfg)
        self.neck = FPN(cfg.fpn_in, cfg.fpn_out)
        self.decoder = TransformerDecoder(cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.dim_ffn, cfg.dropout)
        self.proj = Projector(cfg.embed_dim, cfg.d_model // 2, 3)
        self.backbone.requires_grad_(mode == "finetune")
        self.train()

    def train(self, mode: bool = True) -> CRIS:
        super().train(mode)
        if self.mode != "finetune":
            self.backbone.eval()
        return self

    def encode_image(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        c3, c4, c5 = self.backbone.encode_image(pixel_values)
        return {"c3": c3, "c4": c4, "c5": c5}

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        words, state = self.backbone.encode_text(input_ids, attention_mask)
        # The decoder masks padding from the attention mask, so it travels with the features.
        return {"words": words, "state": state, "attention_mask": attention_mask}

    def decode(self, image: dict[str, torch.Tensor], text: dict[str, torch.Tensor],
               size: tuple[int, int]) -> torch.Tensor:
        """Logits (B, 1, *size) from the backbone's outputs."""
        words, state, attention_mask = text["words"], text["state"], text["attention_mask"]
        # True at padding; a prompt with no real token masks nothing rather than yielding NaN.
        pad_mask = (attention_mask == 0) & attention_mask.bool().any(1, keepdim=True)
        if not self.mask_padding:  # as the study's code ran: nothing masked
            pad_mask = torch.zeros_like(pad_mask)
        fq = self.decoder(self.neck((image["c3"], image["c4"], image["c5"]), state), words, pad_mask)
        logits = self.proj(fq, state)
        return F.interpolate(logits, size=tuple(size), mode=self.upsample, align_corners=self.upsample == "bicubic")


def _key_report(missing: list[str], unexpected: list[str]) -> str:
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else "")

    return (f"{len(missing)} missing key(s): [{some(missing)}]; "
            f"{len(unexpected)} unexpected key(s): [{some(unexpected)}]")


def load_cris_checkpoint(model: CRIS, path: str | os.PathLike) -> None:
    """Load a checkpoint in the original CRIS format (``{"state_dict": {"module.<key>": ...}}``,
    or a bare state dict) strictly; raise ValueError naming missing and unexpected keys."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"CRIS checkpoint {os.fspath(path)} does not match the model: "
                         + _key_report(missing, unexpected))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"CRIS checkpoint {os.fspath(path)} does not match the model: {error}") from error


def load_openai_clip(backbone: CLIPBackbone, weights: str) -> None:
    """Load OpenAI CLIP RN50 (``"openai"``, downloaded by open_clip, or a path to its ``.pt``)."""
    if weights == "openai":
        weights = download_pretrained(get_pretrained_cfg("RN50", "openai"))
    try:  # OpenAI ships a TorchScript archive
        state = torch.jit.load(weights, map_location="cpu").state_dict()
    except RuntimeError:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    result = backbone.load_state_dict(state, strict=False)
    # Only the residual branch CRIS adds to the attention pool is new.
    missing = [k for k in result.missing_keys if not k.startswith("visual.attnpool.connect.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"CLIP weights {weights} do not fit the RN50 backbone: "
                         + _key_report(missing, list(result.unexpected_keys)))


def build_cris(mode: str, size: str, weights: str | None = None, decoder_dropout: float | None = None,
               mask_padding: bool = True, upsample: str = "bilinear") -> CRIS:
    """``weights``: None for random init; ``"openai"`` or a ``.pt`` path for OpenAI CLIP RN50 in the
    backbone (full size only); a ``.pth`` path for a whole CRIS checkpoint in the original format.
    ``decoder_dropout`` None keeps the config's 0.1 (CRIS's own cris_r50.yaml; the study's 0.2)."""
    config = cris_config(size)
    if decoder_dropout is not None:
        config = dataclasses.replace(config, dropout=decoder_dropout)
    model = CRIS(config, mode, mask_padding, upsample)
    if weights is None:
        return model
    if str(weights).endswith(".pth"):
        load_cris_checkpoint(model, weights)
    elif weights == "openai" or str(weights).endswith(".pt"):
        if size != "full":
            raise ValueError("OpenAI CLIP RN50 weights fit the full-size CRIS only")
        load_openai_clip(model.backbone, weights)
    else:
        raise ValueError(f"unrecognised CRIS weights {weights!r}: expected 'openai', a .pt or a .pth file")
    return model
