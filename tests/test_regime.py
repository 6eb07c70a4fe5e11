"""The study as it ran: each model trained in the study's regime, shared experiments run once, the
released code's settings one flag away, and gradient accumulation that keeps the batch's gradient."""

import argparse
import dataclasses
import json

import pytest
import torch
from cli import run_cli

from datasets.shards import ShardStore
from datasets.synthetic import split_rows
from orchestrator.experiment import ExperimentSpec
from orchestrator.run import spec_setting
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from search_spaces.fidelity import AS_RELEASED, as_released
from search_spaces.grid import PROFILES, STUDY_BLOCKS, shared_experiments, specs_of
from trainables.experiment import prepare
from trainables.models import build_model
from trainables.trainer import TrainConfig, make_optimizer, make_scheduler, micro_batches

CLIPSEG_FAMILY = {"clipseg", "biomedclipseg", "biomedclipseg_d"}


def test_the_default_study_trains_the_clipseg_family_decoder_only():
    study = PROFILES["study"]()
    assert not [s.id for s in study if s.model in CLIPSEG_FAMILY and s.mode == "finetune"]
    assert {s.regime for s in study} == {"as_run"}
    individual = STUDY_BLOCKS["individual"].specs()
    assert {(s.model, s.mode) for s in individual} == {("cris", "finetune"), ("clipseg", "frozen"),
                                                       ("biomedclipseg", "frozen"), ("biomedclipseg_d", "frozen")}
    # Decoder-only CLIPSeg in `individual` is the `frozen` block's CLIPSeg: one id, run once.
    shared = shared_experiments(tuple(STUDY_BLOCKS.values()))
    assert list(shared) == [("individual", "frozen")] and len(shared[("individual", "frozen")]) == 72
    assert all(i.startswith("clipseg-frozen-") for i in shared[("individual", "frozen")])
    assert len(study) == 440 - 72 == len({s.id for s in study})


def test_end_to_end_is_its_own_opt_in_block():
    block = STUDY_BLOCKS["end_to_end"].specs()
    assert len(block) == 216 and {s.regime for s in block} == {"end_to_end"} and {s.mode for s in block} == {"finetune"}
    assert {s.model for s in block} == CLIPSEG_FAMILY and all(s.encoder_lr_scale == 0.01 for s in block)
    assert not {s.id for s in block} & {s.id for s in PROFILES["study"]()}
    # The regime travels with the spec: in its dict (spec.json) and, through the mode, in its id.
    spec = block[0]
    assert spec.to_dict()["regime"] == "end_to_end" and ExperimentSpec.from_dict(spec.to_dict()) == spec


def test_dry_run_shows_regimes_needs_and_shared_experiments(tmp_path):
    result = run_cli("grid", "--profile", "study", "--dry-run", "--storage", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "shared: 72 experiments are in both individual and frozen" in out
    assert "total: 368 experiments (0 done)" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()
            and line.split()[0] in STUDY_BLOCKS and not line.startswith(" ")}
    assert rows["individual"][1:3] == ["288", "as_run"] and float(rows["individual"][3]) > 10
    assert "fit on" in out and "cluster.yaml" in out and "fit NO node type" not in out

    e2e = run_cli("grid", "--profile", "study", "--block", "end_to_end", "--dry-run", "--storage", str(tmp_path),
                  timeout=300)
    assert e2e.returncode == 0, e2e.stderr
    assert "total: 216 experiments" in e2e.stdout and "216 on gpu_1x_l40s" in e2e.stdout


def test_as_released_sets_the_released_codes_settings():
    cris, clipseg = (next(s for s in STUDY_BLOCKS["individual"].specs() if s.model == m) for m in ("cris", "clipseg"))
    released = as_released(cris)
    assert (released.bce_weight, released.decoder_dropout, released.mask_padding, released.upsample) == (
        0.0, 0.2, False, "bicubic")
    assert released.hparams == "released" and released.patience == 20 and released.id != cris.id
    assert as_released(clipseg).lr == 2e-4 and as_released(clipseg).batch_size == 16
    assert set(AS_RELEASED) == CLIPSEG_FAMILY | {"cris"}
    zeroshot = STUDY_BLOCKS["zeroshot"].specs()[0]
    assert as_released(zeroshot) == zeroshot  # nothing trains


def test_set_parses_spec_fields_with_their_types():
    assert spec_setting("bce_weight=0") == ("bce_weight", 0)
    assert spec_setting("mask_padding=false") == ("mask_padding", False)
    assert spec_setting("weights=null") == ("weights", None)
    for bad in ("nope=1", "model=cris", "mask_padding=3", "lr=fast", "batch_size"):
        with pytest.raises(argparse.ArgumentTypeError):
            spec_setting(bad)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("shards"))
    ShardStore(root).write_dataset("tiny", split_rows("tiny", (("train", 8), ("val", 4), ("test", 4)), seed=5),
                                   NON_RADIOLOGY_PROMPT_TYPES)
    return root


def test_gradient_accumulation_keeps_the_batch_gradient(data):
    torch.set_num_threads(2)
    spec = ExperimentSpec(model="clipseg", mode="frozen", train_set="tiny", prompt_type="p1", size="small",
                          batch_size=8, max_epochs=1)
    grads = {}
    for k in (1, 2, 4):
        one = dataclasses.replace(spec, grad_accum=k)
        trainer, _ = prepare({**one.to_dict(), "id": one.id}, data)
        trainer.train_epoch()  # one optimizer step over the whole batch of 8, in k micro-batches
        # Compared before Adam, which divides by the gradient's own scale and so magnifies float noise.
        grads[k] = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert grads[1] and all(g.abs().max() > 0 for g in grads[1].values())
    for k in (2, 4):
        assert grads[k].keys() == grads[1].keys()
        assert all(torch.allclose(grads[1][n], grads[k][n], atol=1e-6) for n in grads[1])
    with pytest.raises(ValueError, match="grad_accum"):
        dataclasses.replace(spec, grad_accum=3)
    parts = micro_batches({"sample_ids": list("abcde"), "x": torch.arange(5), "f": {"y": torch.zeros(5, 2)}}, 2)
    assert [p["sample_ids"] for p in parts] == [list("abc"), list("de")] and parts[1]["f"]["y"].shape == (2, 2)


def test_cosine_schedule_spans_schedule_epochs():
    model = torch.nn.Linear(2, 1)
    config = TrainConfig(scheduler="cosine", max_epochs=4, schedule_epochs=90)
    assert make_scheduler(config, make_optimizer(config, model)).T_max == 90
    plain = dataclasses.replace(config, schedule_epochs=None)
    assert make_scheduler(plain, make_optimizer(plain, model)).T_max == 4


def test_cris_released_options_change_what_the_model_computes():
    torch.manual_seed(0)
    ours = build_model("cris", "finetune", "small").eval()
    released = build_model("cris", "finetune", "small", decoder_dropout=0.2, mask_padding=False,
                           upsample="bicubic").eval()
    released.load_state_dict(ours.state_dict())
    assert released.decoder.layers[0].dropout1.p == 0.2 and ours.decoder.layers[0].dropout1.p == 0.1
    pixels = torch.randn(1, 3, 128, 128)
    ids = torch.zeros(1, 32, dtype=torch.long)
    ids[0, :4] = torch.tensor([49406, 320, 1929, 49407])
    mask = (torch.arange(32) < 4).long()[None]
    with torch.no_grad():
        assert not torch.allclose(ours(pixels, ids, mask), released(pixels, ids, mask))
        padding_only = build_model("cris", "finetune", "small", mask_padding=False).eval()
        padding_only.load_state_dict(ours.state_dict())
        # Without padding there is nothing to mask: the two agree.
        full = torch.ones_like(mask)
        assert torch.allclose(ours(pixels, ids, full), padding_only(pixels, ids, full), atol=1e-5)
    with pytest.raises(ValueError, match="takes no option"):
        build_model("clipseg", "frozen", "small", mask_padding=False)


def test_study_profile_lists_each_experiment_once():
    everything = specs_of(tuple(STUDY_BLOCKS.values()))
    assert len(everything) == len({s.id for s in everything})


def test_pil_resize_is_the_studys_filter_and_close_to_ours():
    import io

    import numpy as np
    from PIL import Image

    from datasets.decoded import decode_image

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((20, 20, 1))).astype(np.uint8)  # 240 x 320
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    pil, hw = decode_image(data, "x", 64, "pil")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.BILINEAR))
    assert hw == (240, 320) and np.array_equal(pil, expected.transpose(2, 0, 1))
    ours, _ = decode_image(data, "x", 64, "torch")
    assert 0 < np.abs(ours.astype(float) - pil).mean() < 3


def test_an_as_released_spec_decodes_with_the_studys_filter(data):
    spec = as_released(ExperimentSpec(model="clipseg", mode="frozen", train_set="tiny", prompt_type="p1",
                                      size="small", max_epochs=1))
    trainer, _ = prepare({**spec.to_dict(), "id": spec.id}, data)
    assert spec.resize == "pil" and trainer.train_set.decoded.folder != prepare(
        {**dataclasses.replace(spec, resize="torch").to_dict(), "id": "x"}, data)[0].train_set.decoded.folder


@pytest.mark.slow
def test_the_demo_runs_as_released(tmp_path):
    storage = tmp_path / "runs"
    result = run_cli("grid", "--profile", "demo", "--as-released", "--max-epochs", "1", "--data",
                     str(tmp_path / "shards"), "--storage", str(storage), "--no-dashboard", "--verbose", "0",
                     timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    specs = [json.loads(p.read_text()) for p in (storage / "demo" / "experiments").glob("*/spec.json")]
    assert len(specs) == len(PROFILES["demo"]()) == 6
    for spec in specs:
        assert (spec["hparams"], spec["bce_weight"], spec["lr"], spec["resize"], spec["patience"]) == (
            "released", 0.0, 2e-4, "pil", 20)
        assert (storage / "demo" / "experiments" / spec["id"] / "DONE").exists()
    assert "6 finished" in result.stdout
