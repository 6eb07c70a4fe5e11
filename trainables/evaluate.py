"""Score a finished experiment's best weights on any test split, prompt type and prompt perturbation.

Plain Python, no Ray: the evaluation runs (``ablate``, ``ood``) call it from Tune trials, tests and
notebooks call it directly. The model is rebuilt from the experiment's spec, with the same seed (so
the frozen random weights come back identical) or the same pretrained weights, and the stored best
weights, which hold only what training changed, are loaded over it.
"""

from __future__ import annotations

import numpy as np
import torch

from datasets.decoded import decode_mask
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardError, ShardStore
from prompts.images import ImageLimitError, open_image
from prompts.perturb import Perturbation
from trainables.models import build_model, build_tokenizer, encoder_prefixes, model_inputs, model_options
from trainables.trainer import TrainConfig, Trainer


def load_best_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load trainable weights over a rebuilt model; a state that does not fit it is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise ValueError(f"the best weights of {source} do not fit the model its spec builds: missing "
                         f"{sorted(trainable & set(missing))[:5]}, unexpected {sorted(unexpected)[:5]}")


class Evaluator:
    """One experiment's model, built once, scored on as many (dataset, prompt, perturbation) as asked."""

    def __init__(self, spec: dict, best_state: dict[str, torch.Tensor] | None, data: str,
                 device: torch.device | None = None):
        self.spec, self.store = spec, ShardStore(data)
        self.inputs = model_inputs(spec["model"], spec["size"])
        torch.manual_seed(spec["seed"])  # as in trainables.experiment.prepare: the same frozen init
        model = build_model(spec["model"], spec["mode"], spec["size"], spec["weights"], **model_options(spec))
        if best_state is not None:  # None: a zero-shot experiment, evaluated as built
            load_best_state(model, best_state, spec.get("id", spec["model"]))
        config = TrainConfig(batch_size=spec["batch_size"], bce_weight=spec["bce_weight"], seed=spec["seed"],
                             encoder_prefixes=encoder_prefixes(spec["model"]), max_epochs=0)
        # The Trainer's evaluation path (batching, normalisation, autocast, dice at the original
        # size) is what scored the experiment; it needs no training data here.
        self.trainer = Trainer(model, build_tokenizer(spec["model"], spec["weights"]), self.inputs, config,
                               train_set=None, val_set=None, device=device)

    def split(self, dataset: str, prompt_type: str, perturbation: Perturbation | None = None) -> SegmentationSplit:
        """A test split as this experiment's model reads it (its input size, seed and resizing)."""
        return SegmentationSplit(self.store, dataset, "test", prompt_type, self.inputs.input_size, train=False,
                                 seed=self.spec["seed"], perturbation=perturbation,
                                 resize=self.spec.get("resize", "torch"))

    def evaluate(self, dataset: str, prompt_type: str, perturbation: Perturbation | None = None
                 ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        """Dice, NSD and HD95 per test image (``Trainer.score``), and the prompt each image was given."""
        split = self.split(dataset, prompt_type, perturbation)
        return self.trainer.score(split), {split.sample_ids[i]: split.prompt(i) for i in range(len(split))}

    def predict(self, dataset: str, prompt_type: str, perturbation: Perturbation | None, sample_ids: list[str]
                ) -> dict[str, tuple[np.ndarray, str]]:
        """Each image's predicted mask (boolean, original size, as scored) and the prompt it was given."""
        split = self.split(dataset, prompt_type, perturbation)
        index = {sample: i for i, sample in enumerate(split.sample_ids)}
        masks = self.trainer.predict(split, [index[s] for s in sample_ids])
        return {s: (masks[s], split.prompt(index[s])) for s in sample_ids}

    def originals(self, dataset: str, sample_ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each test image (RGB) and its ground-truth mask (boolean) as stored, at the original size."""
        wanted, out = set(sample_ids), {}
        for row in self.store.read_split(dataset, "test", ["sample_id", "image", "mask"]).to_pylist():
            if row["sample_id"] in wanted:
                where = f"{dataset}/test row {row['sample_id']}"
                try:  # over the limits of prompts.images: refused before any pixel is decoded
                    with open_image(row["image"], f"{where}, field 'image'") as image:
                        pixels = np.asarray(image.convert("RGB"))
                except ImageLimitError as e:
                    raise ShardError(str(e)) from None
                except (OSError, ValueError, SyntaxError) as e:
                    raise ShardError(f"{where}, field 'image': not a decodable image ({e})") from None
                mask = decode_mask(row["mask"], where)  # as scored
                out[row["sample_id"]] = (pixels, mask)
        return out
