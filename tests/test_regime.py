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
from orchestrator.common import spec_setting
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from search_spaces.experiment import ExperimentSpec
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
    assert [p["sample_ids"] for p in parts] == [list("ab"), list("cde")] and parts[1]["f"]["y"].shape == (3, 2)
    # Never a slice of one sample (BatchNorm cannot train on it): a short batch gets fewer slices.
    for n, k in ((9, 8), (25, 8), (3, 8), (2, 2)):
        sizes = [len(p["sample_ids"]) for p in micro_batches({"sample_ids": list(range(n))}, k)]
        assert sum(sizes) == n and min(sizes) >= 2 and len(sizes) <= k, (n, k, sizes)


def test_cris_trains_in_micro_batches_on_a_short_last_batch(data):
    # 8 rows at batch 6: batches of 6 (three slices of 2) and 2 (one slice): BatchNorm sees no single sample.
    spec = ExperimentSpec(model="cris", mode="finetune", train_set="tiny", prompt_type="p1", size="small",
                          batch_size=6, grad_accum=3, max_epochs=1)
    trainer, _ = prepare({**spec.to_dict(), "id": spec.id}, data)
    assert trainer.train_epoch() > 0


def lrs(config: TrainConfig, epochs: int) -> list[float]:
    optimizer = make_optimizer(config, torch.nn.Linear(2, 1))
    scheduler = make_scheduler(config, optimizer)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_schedule_spans_schedule_epochs_then_holds():
    config = TrainConfig(lr=1.0, scheduler="cosine", max_epochs=200, schedule_epochs=90)
    rates = lrs(config, 200)
    assert rates[0] == 1.0 and rates[45] == pytest.approx(0.5) and rates[90] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # decays, then stays at 0: no warm restart
    plain = lrs(dataclasses.replace(config, schedule_epochs=None, max_epochs=4), 4)
    assert plain[2] == pytest.approx(0.5)  # without a horizon, over max_epochs


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
        # The padding mask alone changes the output of a padded prompt...
        assert not torch.allclose(ours(pixels, ids, mask), padding_only(pixels, ids, mask), atol=1e-5)
        # ... and nothing without padding.
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


def test_set_changes_only_the_models_that_take_an_option_and_marks_hyperparameters():
    from orchestrator.common import build_specs
    from search_spaces.experiment import MODEL_OPTION_FIELDS
    from trainables.models import cards

    assert {o for c in cards() for o in c.options} == set(MODEL_OPTION_FIELDS)
    args = argparse.Namespace(profile="study", block=["individual"], max_epochs=None, only=None, as_released=False,
                              hparams_from_hpo=None, grad_accum=None, set=[spec_setting("decoder_dropout=0.2")])
    before = {s.id: s for s in STUDY_BLOCKS["individual"].specs()}
    after = build_specs(args)
    changed = [s for s in after if s.id not in before]
    assert changed and {s.model for s in changed} == {"cris"} and all(s.decoder_dropout == 0.2 for s in changed)
    args.set = [spec_setting("lr=1e-4")]
    assert {s.hparams for s in build_specs(args)} == {"set"}
    with pytest.raises(argparse.ArgumentTypeError):
        spec_setting("resize=PIL")
