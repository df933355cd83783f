"""Learning class tokens (textual inversion) for any labelled image dataset, many classes at once.

The method is the reference's: one new token per class, initialised to the mean embedding e_init of
the class name's tokens; only the new embeddings train (the embedding table, the text encoder,
the UNet and the VAE stay frozen, so every existing row is bit-identical afterwards); magnitude
pinning by re-parametrisation in the forward pass: the raw trainable row ``w`` is free, the row the
text encoder sees is ``w·‖e_init‖/‖w‖``, AdamW (betas 0.9/0.999, weight decay 1e-2) acts on ``w``,
and the pinned row is what is saved; prompts come from the 27 standard "a photo of a {}" templates
(``init_word=`` and ``templates=`` change the start and the prompts, recorded in the bank);
images are square centre-cropped, resized (bicubic) to the training resolution (by default the
generator's native size) and randomly flipped; the target is the noise or the velocity, as the
noise scheduler's ``prediction_type`` says (SD2 is v-prediction). In fp16 the frozen models run
under autocast, the text encoder's weights and the new rows stay fp32, and a gradient scaler
(``torch.amp.GradScaler``) keeps small gradients from underflowing (what accelerate does for the
reference); bf16 needs no scaler.

Faster by design:

* **Cached latents.** Each training image and its mirror image go through the VAE once; the
  posterior mean and standard deviation are kept and a fresh latent is sampled from them every
  step (what re-encoding every step gives, without the VAE encoder's cost).
* **Many classes per batch.** A batch holds one sample of each of ``B`` classes, each conditioned
  on its own token; the loss is the sum of per-class mean losses, so each token's gradient comes
  from its own samples only. Each class draws its samples, templates, flips, timesteps and noise
  from its own generator, and AdamW is elementwise, so ``B`` classes trained together follow the
  same trajectories as each trained alone (tested to 1e-4).
* **Resumable.** The bank records each class's finished steps; a training state file beside it
  holds the optimiser moments and generator states, so an interrupted run continues exactly. The
  bank also records the sha256 of the state file saved with it: unfinished classes continue only
  from that very file, and restart from step 0 (with a warning) when it is missing or another one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .classes import ClassInfo, ClassList
from .errors import SpecError, TokenBankError
from .files import atomic_write, writing_into
from .validate import check_choice, check_finite_float, check_non_negative_int, check_positive_int

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from .tokens import TokenBank

__all__ = ["IMAGENET_TEMPLATES", "PRESETS", "TokenTrainer", "TrainConfig", "TrainingData", "learn_tokens",
           "load_training_data"]

logger = logging.getLogger(__name__)

#: The 27 templates of the textual-inversion reference ("imagenet_templates_small").
IMAGENET_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)

#: ``reference`` (default): the ImageNet* settings (3000 steps, lr 5e-4 constant, AdamW with weight
#: decay 1e-2, batch 1, the generator's native resolution: 768 px for SD2).
#: ``fast``: 1000 steps at lr 2e-3, otherwise the same method. Our choice, not validated on a real
#: model (no weights could be downloaded here): the reference's lr x 4 for a third of the steps,
#: the usual trade for textual inversion. ``resolution: None`` = the generator's native size.
PRESETS = {
    "reference": {"steps": 3000, "lr": 5e-4, "resolution": None, "weight_decay": 1e-2},
    "fast": {"steps": 1000, "lr": 2e-3, "resolution": None, "weight_decay": 1e-2},
}

#: AdamW's betas in every preset (the reference's, torch's defaults).
ADAM_BETAS = (0.9, 0.999)

#: A training resolution above this multiple of the generator's native size is refused unless
#: ``allow_high_resolution=True``: the VAE's attention grows with the square of the pixel count, so
#: 512 px on a 32-px model ran 14 CPU-minutes at 3.5 GB for 6 steps.
MAX_RESOLUTION_OVER_NATIVE = 2


@dataclass
class TrainingData:
    """Images per class: ``items[c]`` = image paths (or PIL images) of label-space class ``c``."""

    class_list: ClassList
    items: dict[int, list]
    skipped: int = 0  # images that failed to decode

    @property
    def classes(self) -> ClassList:
        """Deprecated name of :attr:`class_list`."""
        from .compat import deprecated

        deprecated("TrainingData.classes is now TrainingData.class_list")
        return self.class_list


def _open_rgb(item):
    from PIL import Image

    from .images import to_rgb

    if isinstance(item, Image.Image):
        return to_rgb(item)
    with Image.open(item) as im:
        im.load()
        return to_rgb(im)


def _imagenet_folder_indices(names: list[str]) -> list[int] | None:
    """ImageNet-1k indices of folders named by WordNet id (``n01440764``), if every folder is one."""
    import re

    from .classes import imagenet_classes

    if not all(re.fullmatch(r"n\d{8}", n) for n in names):
        return None
    by_wnid = {c.wnid: c.index for c in imagenet_classes() if c.wnid}
    unknown = [n for n in names if n not in by_wnid]
    if unknown:
        logger.warning("class folders look like WordNet ids but %d are not ImageNet-1k classes (e.g. %s): "
                       "using the folder names as class names", len(unknown), unknown[0])
        return None
    return [by_wnid[n] for n in names]


def load_training_data(data, classes=None) -> TrainingData:
    """Training images from an ``ImageFolder``-style folder, a Hugging Face dataset (``image`` and
    ``label`` columns; a ``datasets.Dataset`` or a path saved with ``save_to_disk``), or a list
    of ``(path, class name)`` pairs.

    A folder whose class folders are all ImageNet-1k WordNet ids (``train/n01440764/...``) is
    ImageNet: labels are ImageNet indices and class names the class table's common names (so
    tokens are ``<tench-0>``, initialised from the word pieces of "tench").

    Raises:
        SpecError: a missing folder, an empty class folder, a dataset without the columns.
    """
    items: dict[int, list] = {}
    saved_dataset = isinstance(data, (str, os.PathLike)) and (Path(data) / "state.json").exists()
    present: list[int] | None = None  # ImageNet-style folders: the classes there are (of 1000)
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir() and not saved_dataset:
        root = Path(data)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise SpecError(f"{str(root)!r} has no class folders; expected ROOT/<class name>/<image files>")
        imagenet = _imagenet_folder_indices([f.name for f in folders])
        if imagenet is not None:
            # train/n01440764/...: the ImageNet label space, names from the class table (token <tench-0>,
            # initialised from "tench", label 0), never the WordNet id's digit pieces
            from .classes import imagenet_classes

            class_list, present = imagenet_classes(), imagenet
        else:
            class_list = ClassList.from_names([f.name.replace("_", " ") for f in folders],
                                              ids=[f.name for f in folders])
        for i, folder in zip(present or range(len(folders)), folders):
            items[i] = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    elif isinstance(data, (list, tuple)):
        names = sorted({str(c) for _, c in data})
        class_list = ClassList.from_names(names)
        index = {n: i for i, n in enumerate(names)}
        for path, c in data:
            items.setdefault(index[str(c)], []).append(Path(path))
    else:
        ds = data
        if isinstance(data, (str, os.PathLike)):
            import datasets

            if not Path(data).exists():
                raise SpecError(f"training data {str(data)!r} does not exist; pass an ImageFolder-style folder, a "
                                "dataset saved with save_to_disk, or a list of (path, class) pairs")
            ds = datasets.load_from_disk(str(data))
        cols = set(getattr(ds, "column_names", []) or [])
        if not {"image", "label"} <= cols:
            raise SpecError(f"the dataset needs 'image' and 'label' columns; it has {sorted(cols)}")
        feature = ds.features["label"]
        names = list(getattr(feature, "names", None) or [str(i) for i in range(max(ds["label"]) + 1)])
        class_list = ClassList.from_names(names)
        for row in ds:
            items.setdefault(int(row["label"]), []).append(row["image"])
    wanted = class_list.resolve(classes) if classes is not None else present or list(range(len(class_list)))
    empty = [class_list[c].name for c in wanted if not items.get(c)]
    if empty:
        raise SpecError(f"{len(empty)} class{'es have' if len(empty) > 1 else ' has'} no images: "
                        f"{', '.join(repr(e) for e in empty[:5])}; add images or leave the class out (classes=)")
    return TrainingData(class_list, {c: items[c] for c in wanted})


def _pin_rows(raw: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """The rows the text encoder sees: ``raw·norms/‖raw‖`` row by row (the reference's magnitude pinning,
    a re-parametrisation: the gradient reaches ``raw`` through it, and AdamW's weight decay acts on ``raw``)."""
    return raw * (norms / raw.norm(dim=-1)).unsqueeze(-1)


def _new_token_embedding(table, first_new_id: int, rows, norms=None):
    """An input-embedding module: the frozen table for existing ids, trainable ``rows`` for new ones
    (pinned to ``norms`` in the forward when given)."""
    import torch

    class NewTokenEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = table
            self.rows = rows
            self.norms = norms
            self.first_new_id = first_new_id

        @property
        def weight(self):  # what transformers expects of an input embedding
            return self.table.weight

        def forward(self, ids):
            out = self.table(ids.clamp(max=self.first_new_id - 1))
            new = ids >= self.first_new_id
            if bool(new.any()):
                rows = self.rows if self.norms is None else _pin_rows(self.rows, self.norms)
                picked = rows[(ids - self.first_new_id).clamp(min=0)].to(out.dtype)
                out = torch.where(new[..., None], picked, out)
            return out

    return NewTokenEmbedding()


def _prepare_images(items: list, resolution: int):
    """Decoded images and their mirrors as ``(2n, 3, r, r)`` in [-1, 1], as the reference prepares them:
    square centre crop, then PIL's bicubic resize to ``r``; decode failures skipped."""
    import torch
    from PIL import Image
    from torchvision.transforms import functional as F

    out, skipped = [], 0
    for item in items:
        try:
            image = _open_rgb(item)
        except Exception:  # noqa: BLE001 - any undecodable file is skipped and counted
            skipped += 1
            continue
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
        x = F.to_tensor(image) * 2 - 1
        out += [x, torch.flip(x, dims=[2])]
    return (torch.stack(out) if out else None), skipped


@dataclass(frozen=True)
class TrainConfig:
    """Settings of token learning (frozen: one object describes a run and is recorded in the bank).

    Build one from a preset with :meth:`from_preset`; the default is the ``reference`` preset.
    ``max_steps`` is the number of training steps per class (one sample of the class per step).
    ``resolution=None`` trains at the generator's native size (``unet.config.sample_size`` x the
    VAE's scale factor: 768 px for SD2); more than :data:`MAX_RESOLUTION_OVER_NATIVE` x native is
    refused unless ``allow_high_resolution=True``.

    Raises:
        SpecError: a setting out of its range.
    """

    preset: str = "reference"
    max_steps: int = PRESETS["reference"]["steps"]
    lr: float = PRESETS["reference"]["lr"]
    resolution: int | None = PRESETS["reference"]["resolution"]
    weight_decay: float = PRESETS["reference"]["weight_decay"]
    classes_per_batch: int = 8
    seed: int = 0
    save_every: int = 100
    eval_draws: int = 0
    allow_high_resolution: bool = False
    init_word: str | None = None
    templates: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.init_word is not None and not str(self.init_word).strip():
            raise SpecError("init_word='' is empty; give a word (e.g. 'object') or leave it out (the class name)")
        if self.templates is not None:
            object.__setattr__(self, "templates", tuple(self.templates))
            bad = [t for t in self.templates if not isinstance(t, str) or t.count("{}") != 1]
            if bad or not self.templates:
                raise SpecError(f"templates {list(bad or self.templates)!r} must each hold '{{}}' exactly once "
                                "(where the token goes), e.g. 'a photo of a {}'")
        check_choice(self.preset, "preset", PRESETS)
        check_positive_int(self.max_steps, "max_steps", example=1000)
        if self.resolution is not None:
            check_positive_int(self.resolution, "resolution", example=768)
        check_positive_int(self.classes_per_batch, "classes_per_batch", example=8)
        check_positive_int(self.save_every, "save_every", example=100)
        check_non_negative_int(self.seed, "seed")
        check_non_negative_int(self.eval_draws, "eval_draws")
        check_finite_float(self.lr, "lr", above=0, example=5e-4)
        check_finite_float(self.weight_decay, "weight_decay", low=0, example=1e-2)

    @property
    def prompt_templates(self) -> tuple[str, ...]:
        """The prompts the tokens are trained in (default: the reference's 27)."""
        return self.templates or IMAGENET_TEMPLATES

    @classmethod
    def from_preset(cls, preset: str = "reference", **overrides) -> TrainConfig:
        """The preset's settings (:data:`PRESETS`) with the given overrides (``None`` keeps the preset's)."""
        check_choice(preset, "preset", PRESETS)
        values = {"preset": preset, "max_steps": PRESETS[preset]["steps"], "lr": PRESETS[preset]["lr"],
                  "resolution": PRESETS[preset]["resolution"], "weight_decay": PRESETS[preset]["weight_decay"]}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def resolve_resolution(self, native: int, model: str = "the generator") -> int:
        """The training resolution for a generator of native size ``native`` px.

        Raises:
            SpecError: more than :data:`MAX_RESOLUTION_OVER_NATIVE` x native without ``allow_high_resolution``.
        """
        if self.resolution is None:
            return native
        if self.resolution > MAX_RESOLUTION_OVER_NATIVE * native and not self.allow_high_resolution:
            raise SpecError(
                f"resolution={self.resolution} px is more than {MAX_RESOLUTION_OVER_NATIVE}x the native {native} px "
                f"of {model}: each step would cost about {(self.resolution / native) ** 2:.0f}x the time and memory "
                f"of a native-size step for no benefit; leave the resolution out (native), or force it with "
                "--allow-high-resolution (allow_high_resolution=True)")
        return self.resolution

    def record(self) -> dict:
        """What a bank records about its training (``extra["training"]``; ``steps`` is ``max_steps``;
        the trainer replaces ``resolution`` with the one used)."""
        return {"preset": self.preset, "steps": self.max_steps, "lr": self.lr, "resolution": self.resolution,
                "weight_decay": self.weight_decay, "adam_betas": list(ADAM_BETAS),
                "classes_per_batch": self.classes_per_batch, "seed": self.seed,
                "magnitude_pinning": PINNING, "init": self.init_word or "class name",
                "templates": list(self.templates) if self.templates else "imagenet_templates_small (27)"}


#: How the new rows keep their initial norm (recorded in every bank; a resumed bank must match).
PINNING = "reparametrised: w*|e_init|/|w| in the forward, AdamW on w"


class TokenTrainer:
    """Learns one token per class, in named phases (see :meth:`run`).

    Args:
        data: training images (see :func:`load_training_data`).
        config: the :class:`TrainConfig`.
        pipeline: the diffusion model and where it runs (a :class:`~dsi_bench.pipeline.PipelineSpec`).
        classes: which classes to learn (default: all).
        out: bank path (``.safetensors``); with it, progress is saved every ``config.save_every``
            steps and at the end of each group, and a rerun resumes. Needed under torchrun.
        max_steps_this_run: stop after this many steps (time-boxed jobs; rerun to continue).
        progress: show a progress bar.
    """

    def __init__(self, data, config: TrainConfig, pipeline, *, classes=None, out=None,
                 max_steps_this_run: int | None = None, progress: bool = True, overwrite: bool = False):
        from .dist import World
        from .pipeline import check_model

        if max_steps_this_run is not None:
            check_non_negative_int(max_steps_this_run, "max_steps_this_run")
        self.config = config
        self.world = World.from_env()  # torchrun ranks split the classes
        if self.world.distributed:
            if out is None:
                raise SpecError("learning tokens on several processes (torchrun) needs out= (--out): each rank saves "
                                "its classes there and the last to finish merges them")
            pipeline = pipeline.replace(device=self.world.device(pipeline.device))
        check_model(pipeline.model)
        self.spec = pipeline
        self.train = load_training_data(data, classes)
        self.class_ids = sorted(self.train.items)
        self.row_of = {c: i for i, c in enumerate(self.class_ids)}  # class index -> row of the trained tokens
        self.final_path = Path(out) if out else None
        self.bank_path = _rank_path(self.final_path, self.world.rank, self.world.world_size) if out else None
        self.state_path = self.bank_path.with_suffix(".state.safetensors") if self.bank_path else None
        self.overwrite = overwrite
        if not overwrite:
            _check_continuable(self.final_path, self.class_ids)  # before any model loads
        self.budget = max_steps_this_run if max_steps_this_run is not None else math.inf
        self.progress = progress
        self.steps_run = 0
        self.skipped = 0
        self.losses: list[float] = []
        self.held_out: dict[tuple, tuple[float, float]] = {}

    # ------------------------------------------------------------------ phases
    def run(self) -> TokenBank:
        """Load the models, initialise the rows, resume, train every group of this rank, save, merge.

        Returns:
            the :class:`~dsi_bench.tokens.TokenBank` (the merged bank under torchrun, once every rank is done).
        """
        self.load_components()
        self.init_rows()
        self.resume()
        self.install()
        try:
            groups = self.groups()
            from tqdm.auto import tqdm

            total = sum(self.config.max_steps - self.done[c] for g in groups for c in g)
            with tqdm(total=total, desc="learn-tokens", unit="class-step", dynamic_ncols=True,
                      disable=not self.progress or not self.world.main) as self.bar:
                for group in groups:
                    if self.steps_run >= self.budget:
                        break
                    self.train_group(group)
        finally:
            self.uninstall()
        bank = self.bank()
        if self.world.distributed:
            merged = _merge_ranks(self.final_path, self.world.world_size, self.class_ids,
                                  self.config.classes_per_batch, self.config.max_steps)
            bank = merged if merged is not None else bank
        if self.config.eval_draws:
            bank = bank.replace(extra={**bank.extra, "training": {**bank.extra["training"],
                                                                  "held_out_loss": self.held_out_summary()}})
        return bank

    def load_components(self) -> None:
        """The frozen UNet and VAE (shared), a training scheduler, and a fresh text encoder and tokenizer."""
        import torch
        from diffusers import DDPMScheduler

        from .pipeline import load_components

        parts = load_components(self.spec)
        self.unet, self.vae = parts.unet, parts.vae
        self.unet.requires_grad_(False)
        self.vae.requires_grad_(False)
        self.scheduler = DDPMScheduler.from_config(parts.scheduler.config)
        self.text_encoder, self.tokenizer = parts.text_encoder, parts.tokenizer
        self.text_encoder.requires_grad_(False)
        self.table = self.text_encoder.get_input_embeddings()
        # Mixed precision as the reference (accelerate, fp16): the frozen UNet and VAE in the caller's dtype,
        # the text encoder's weights (a private copy) and the new rows in fp32, the forward under autocast,
        # and in fp16 a gradient scaler so that small gradients do not underflow. bf16 has fp32's range.
        self.amp = self.spec.torch_dtype != torch.float32
        if self.amp:
            self.text_encoder.float()
        self.use_scaler = self.spec.torch_dtype == torch.float16
        self.native_resolution = _native_resolution(self.unet, self.vae)
        self.resolution = self.config.resolve_resolution(self.native_resolution, self.spec.model)

    def init_rows(self) -> None:
        """Token names and initial rows: the mean embedding of each class name's tokens."""
        import torch

        from .tokens import release_token_name

        self.infos = [ClassInfo(c, self.train.class_list[c].name, self.train.class_list[c].wnid)
                      for c in self.class_ids]
        self.tokens = [release_token_name(i.name, i.index) for i in self.infos]
        clash = [t for t in self.tokens if t in self.tokenizer.get_vocab()]
        if clash:
            raise TokenBankError(f"tokens {clash[:3]} already exist in the tokenizer of {self.spec.model}; "
                                 "rename the classes")
        init = []
        weight = self.table.weight
        for info in self.infos:
            word = self.config.init_word or info.name
            ids = self.tokenizer(word, add_special_tokens=False).input_ids
            if not ids:
                what = "init_word" if self.config.init_word else "class name"
                raise TokenBankError(f"{what} {word!r} tokenizes to nothing; give a name made of words")
            init.append(weight[torch.tensor(ids, device=weight.device)].float().mean(0).cpu())
        self.init = torch.stack(init)
        self.rows = self.init.clone()  # the raw trainable rows w; the text encoder sees _pin_rows(w, |e_init|)
        self.done = {c: 0 for c in self.class_ids}
        self.saved_state: dict = {}
        self.state_sha256: str | None = None  # of the state file saved with the bank (recorded in it)
        self.kept: dict = {}  # class -> its row as the resumed bank holds it (finished classes: never re-pinned)

    def resume(self) -> None:
        """Rows, finished steps, optimiser moments and generator states from an earlier run's files.

        Finished classes keep the bank's rows as saved. Unfinished classes continue only from the state
        file saved with the bank (the sha256 the bank records); when that file is missing or another one
        (another run's, or one left by a run stopped between writing the bank and the state), they
        restart from step 0 with a warning: continuing from other moments and generator states would end
        with tokens that no uninterrupted run gives, and refusing would throw away the finished classes.
        """
        from .tokens import TokenBank

        if self.bank_path is None or not self.bank_path.is_file() or self.overwrite:
            return
        old = TokenBank.load(self.bank_path)
        dim = self.table.weight.shape[1]
        if old.dim != dim:
            raise TokenBankError(f"{str(self.bank_path)!r} holds {old.dim}-d tokens but {self.spec.model} needs "
                                 f"{dim}-d; use another output path")
        record = old.extra.get("training", {})
        if record.get("base_model_fingerprint") not in (None, _model_id(self.spec)):
            raise TokenBankError(f"{str(self.bank_path)!r} was trained on another model; use another output path")
        self.state_sha256 = record.get("state_sha256")
        state, why = self.saved_with_bank()
        restarted = []
        for c in self.class_ids:
            done = int(record.get("steps_done", {}).get(str(c), 0)) if c in old else 0
            if done >= self.config.max_steps:
                self.kept[c] = self.rows[self.row_of[c]] = old.embedding(c)
            elif done and f"raw.{c}" in state:  # the raw row w: its norm drifts under weight decay
                self.rows[self.row_of[c]] = state[f"raw.{c}"].float()
            elif done:
                restarted.append(c)
                continue
            self.done[c] = done
        self.saved_state = {k: v for k, v in state.items() if int(k.split(".")[1]) not in restarted}
        if restarted:
            logger.warning("%s: the training state %s; restarting its %d unfinished classes from step 0 (%s) so "
                           "that they end as an uninterrupted run would", self.bank_path, why, len(restarted),
                           ", ".join(map(str, restarted[:8])) + (", ..." if len(restarted) > 8 else ""))
        unfinished = [c for c in self.class_ids if 0 < self.done[c] < self.config.max_steps]
        if unfinished:
            self.check_same_settings(record)

    def saved_with_bank(self) -> tuple[dict, str]:
        """The tensors of the state file if it is the one saved with the bank (else ``{}``), and why not."""
        from safetensors.torch import load

        if not self.state_path.is_file():
            return {}, f"{str(self.state_path)!r} is missing"
        if self.state_sha256 is None:
            return {}, f"{str(self.state_path)!r} cannot be matched to the bank (it records no state sha256)"
        data = self.state_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.state_sha256:
            return {}, (f"{str(self.state_path)!r} is not the one saved with the bank (another run's, or a run "
                        "stopped between writing the two)")
        return load(data), ""

    def check_same_settings(self, record: dict) -> None:
        """A run that continues unfinished classes must train them as they were started.

        Raises:
            TokenBankError: a setting that changes the trajectory (lr, weight decay, resolution, seed,
                magnitude pinning) differs from the bank's record.
        """
        ours = {"lr": self.config.lr, "weight_decay": self.config.weight_decay, "resolution": self.resolution,
                "seed": self.config.seed, "magnitude_pinning": PINNING,
                "init": self.config.init_word or "class name",
                "templates": list(self.config.templates) if self.config.templates else "imagenet_templates_small (27)"}
        theirs = {k: record.get(k) for k in ours}
        theirs["init"] = theirs["init"] or "class name"  # banks of 0.2.2 and earlier record neither
        theirs["templates"] = theirs["templates"] or "imagenet_templates_small (27)"
        if theirs["magnitude_pinning"] is None:
            theirs["magnitude_pinning"] = "rescaled after each step (dsi-bench 0.2 and earlier)"
        diff = [f"{k}: {theirs[k]!r} there, {v!r} now" for k, v in ours.items() if theirs[k] != v]
        if diff:
            raise TokenBankError(f"{str(self.bank_path)!r} has unfinished classes trained with other settings "
                                 f"({'; '.join(diff)}); rerun with its settings or use another output path")

    def install(self) -> None:
        """Add the tokens to the tokenizer and route their ids to the trainable rows."""
        import torch

        first_new = len(self.tokenizer)
        self.tokenizer.add_tokens(self.tokens)
        ids = self.tokenizer.convert_tokens_to_ids(self.tokens)
        if ids != list(range(first_new, first_new + len(self.tokens))):
            raise TokenBankError("the tokenizer did not give the new tokens consecutive ids; report this with the "
                                 "model")
        self.param = torch.nn.Parameter(self.rows.to(self.spec.device))  # raw rows w, fp32
        self.norms = self.init.norm(dim=1).to(self.spec.device)  # |e_init|
        self.text_encoder.set_input_embeddings(_new_token_embedding(self.table, first_new, self.param, self.norms))

    def uninstall(self) -> None:
        self.text_encoder.set_input_embeddings(self.table)

    def groups(self) -> list[list[int]]:
        """This rank's unfinished groups. Groups are fixed by the class list (not by what is left),
        so ranks and reruns agree on them."""
        n, world = self.config.classes_per_batch, self.world
        groups = [self.class_ids[i : i + n] for i in range(0, len(self.class_ids), n)]
        groups = [[c for c in g if self.done[c] < self.config.max_steps] for g in groups[world.rank::world.world_size]]
        return [g for g in groups if g]

    def encode_latents(self, group: list[int]) -> dict:
        """Mean and std of the VAE posterior for every image of each class and its mirror, once."""
        import torch

        latents = {}
        for c in group:
            pixels, bad = _prepare_images(self.train.items[c], self.resolution)
            self.skipped += bad
            if pixels is None:
                raise SpecError(f"no image of class {self.train.class_list[c].name!r} could be decoded ({bad} failed)")
            means, stds = [], []
            with torch.no_grad():
                for i in range(0, len(pixels), 8):
                    dist = self.vae.encode(pixels[i : i + 8].to(self.spec.device, self.spec.torch_dtype)).latent_dist
                    means.append(dist.mean.float())
                    stds.append(dist.std.float())
            latents[c] = (torch.cat(means), torch.cat(stds))
        return latents

    def generators(self, group: list[int]) -> dict:
        """One CPU generator per class (its samples, templates, flips, timesteps, noise), resumed if saved."""
        import torch

        gens = {}
        for c in group:
            g = torch.Generator("cpu").manual_seed(_class_seed(self.config.seed, c))
            if f"gen.{c}" in self.saved_state:
                g.set_state(self.saved_state[f"gen.{c}"])
            gens[c] = g
        return gens

    def optimizers(self, group: list[int]) -> dict:
        """One AdamW per class on its raw row ``w``: elementwise anyway, and it makes each class's state separable."""
        import torch

        opts = {}
        for c in group:
            view = torch.nn.Parameter(self.param.data[self.row_of[c]].clone())
            opt = torch.optim.AdamW([view], lr=self.config.lr, betas=ADAM_BETAS, weight_decay=self.config.weight_decay)
            if f"adam.{c}.exp_avg" in self.saved_state:
                opt.state[view] = {"step": self.saved_state[f"adam.{c}.step"].clone(),
                                   "exp_avg": self.saved_state[f"adam.{c}.exp_avg"].to(self.spec.device),
                                   "exp_avg_sq": self.saved_state[f"adam.{c}.exp_avg_sq"].to(self.spec.device)}
            opts[c] = (opt, view)
        return opts

    def scalers(self, group: list[int]) -> dict:
        """One gradient scaler per class (enabled in fp16 only), resumed if saved.

        Each class's loss is scaled by its own factor: its row's gradient comes from its own sample
        only, so an overflow in one class skips that class's step alone and classes trained together
        follow the same trajectories as each trained alone, in fp16 too.
        """
        import torch

        out = {}
        for c in group:
            scaler = torch.amp.GradScaler(self.spec.device_type, enabled=self.use_scaler)
            if self.use_scaler and f"scaler.{c}.scale" in self.saved_state:
                scaler.load_state_dict({**scaler.state_dict(),
                                        "scale": float(self.saved_state[f"scaler.{c}.scale"]),
                                        "_growth_tracker": int(self.saved_state[f"scaler.{c}.growth_tracker"])})
            out[c] = scaler
        return out

    def train_group(self, group: list[int]) -> None:
        """Train a group of classes together until done or the run's budget is spent, then save."""

        latents, gens = self.encode_latents(group), self.generators(group)
        opts, scalers = self.optimizers(group), self.scalers(group)
        total = self.config.max_steps
        before = self.held_out_loss(group, latents) if self.config.eval_draws else None
        while any(self.done[c] < total for c in group) and self.steps_run < self.budget:
            active = [c for c in group if self.done[c] < total]
            per_sample = self.forward_loss(active, gens, latents)  # one sample per class
            _optimizer_step(self.param, per_sample, [self.row_of[c] for c in active], [opts[c] for c in active],
                            [scalers[c] for c in active])
            for c in active:
                self.done[c] += 1
            self.steps_run += 1
            self.bar.update(len(active))
            self.losses.append(float(per_sample.detach().mean()))
            self.bar.set_postfix(loss=f"{self.losses[-1]:.4f}")
            if self.bank_path is not None and self.steps_run % self.config.save_every == 0:
                self.save(opts, gens, scalers)
        if before is not None:
            self.held_out[tuple(group)] = (before, self.held_out_loss(group, latents))
        self.save(opts, gens, scalers)

    def forward_loss(self, active: list[int], gens: dict, latents: dict) -> torch.Tensor:
        """Per-sample diffusion losses, one sample per class, each drawn from its class's generator."""
        import torch

        spec, scheduler = self.spec, self.scheduler
        samples, prompts, timesteps, noises = [], [], [], []
        for c in active:
            g = gens[c]
            mean, std = latents[c]
            j = int(torch.randint(len(mean), (1,), generator=g))
            k = int(torch.randint(len(self.config.prompt_templates), (1,), generator=g))
            t = int(torch.randint(scheduler.config.num_train_timesteps, (1,), generator=g))
            eps_latent = torch.randn(mean[j].shape, generator=g)
            noises.append(torch.randn(mean[j].shape, generator=g))
            samples.append((mean[j] + std[j] * eps_latent.to(mean.device)) * self.vae.config.scaling_factor)
            prompts.append(self.config.prompt_templates[k].format(self.tokens[self.row_of[c]]))
            timesteps.append(t)
        x0 = torch.stack(samples).to(spec.device)
        noise = torch.stack(noises).to(spec.device)
        t = torch.tensor(timesteps, device=spec.device)
        noisy = scheduler.add_noise(x0, noise, t)
        if scheduler.config.prediction_type == "epsilon":
            target = noise
        else:  # v-prediction (SD2)
            target = scheduler.get_velocity(x0, noise, t)
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(spec.device)
        with torch.autocast(spec.device_type, dtype=spec.torch_dtype, enabled=self.amp):
            hidden = self.text_encoder(ids)[0]
            pred = self.unet(noisy.to(spec.torch_dtype), t, hidden.to(spec.torch_dtype)).sample
        return ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))

    def held_out_loss(self, group: list[int], latents: dict) -> float:
        """Mean loss over fixed draws (the same before and after training): a noise-free progress measure."""
        import torch

        gens = {c: torch.Generator("cpu").manual_seed(_class_seed(self.config.seed + 7919, c)) for c in group}
        with torch.no_grad():
            return float(torch.stack([self.forward_loss(group, gens, latents)
                                      for _ in range(self.config.eval_draws)]).mean())

    def held_out_summary(self) -> dict | None:
        """Held-out loss before and after, over the groups trained in this run (``None``: none was)."""
        if not self.held_out:
            return None
        pairs = list(self.held_out.values())
        return {"before": sum(b for b, _ in pairs) / len(pairs), "after": sum(a for _, a in pairs) / len(pairs),
                "draws_per_class": self.config.eval_draws}

    def bank(self) -> TokenBank:
        """The bank as it stands (rows, finished steps and the training record)."""
        import torch

        from .tokens import TokenBank

        with torch.no_grad():
            rows = _pin_rows(self.param.detach(), self.norms).cpu()  # the pinned rows are what is used and saved
        for c, row in self.kept.items():  # finished before this run: exactly as saved
            rows[self.row_of[c]] = row
        return TokenBank(rows, self.infos, self.tokens, base_model=self.spec.model,
                         class_list=self.train.class_list, extra={
            "training": {"base_model_fingerprint": _model_id(self.spec), **self.config.record(),
                         "resolution": self.resolution, "native_resolution": self.native_resolution,
                         "crop": "square centre crop, bicubic resize, horizontal flip p=0.5",
                         "precision": self.precision(),
                         "steps_done": {str(c): n for c, n in self.done.items()},
                         "state_sha256": self.state_sha256,
                         "skipped_images": self.skipped,
                         "losses_this_run": self.losses}})

    def precision(self) -> str:
        """How the forward and backward ran (recorded in the bank)."""
        dtype = str(self.spec.torch_dtype).replace("torch.", "")
        if not self.amp:
            return "float32"
        return f"{dtype} autocast, fp32 rows and text encoder" + (", GradScaler" if self.use_scaler else "")

    def save(self, opts: dict, gens: dict, scalers: dict | None = None) -> None:
        """The bank and the training state (raw rows, AdamW moments, gradient scalers, generator states),
        each written atomically; the bank records the state file's sha256 (see :meth:`resume`)."""
        if self.bank_path is None:
            return
        import torch
        from safetensors.torch import save as st_save

        tensors = dict(self.saved_state)
        for st in _opt_tensors(opts).values():
            tensors.update(st)
        for c in opts:
            tensors[f"raw.{c}"] = self.param.detach()[self.row_of[c]].float()
        for c, scaler in (scalers or {}).items():
            if scaler.is_enabled():
                tensors[f"scaler.{c}.scale"] = torch.tensor(float(scaler.get_scale()))
                tensors[f"scaler.{c}.growth_tracker"] = torch.tensor(
                    float(scaler.state_dict().get("_growth_tracker", 0)))
        for c, g in gens.items():
            tensors[f"gen.{c}"] = g.get_state()
        tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
        state = st_save(tensors)
        self.state_sha256 = hashlib.sha256(state).hexdigest()
        with writing_into(self.bank_path.parent, "the token bank into",
                          "what was saved before is kept; free space and rerun the same command to resume"):
            self.bank().save(self.bank_path)
            atomic_write(self.state_path, state)
        self.saved_state = tensors  # later groups' saves keep this group's final state


def learn_tokens(
    data,
    *,
    classes=None,
    generator: str | os.PathLike | None = None,
    pipeline=None,
    preset: str = "reference",
    max_steps: int | None = None,
    lr: float | None = None,
    resolution: int | None = None,
    classes_per_batch: int = 8,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    save_every: int = 100,
    device: str | None = None,
    dtype: str | None = None,
    max_steps_this_run: int | None = None,
    eval_draws: int = 0,
    allow_high_resolution: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    init_word: str | None = None,
    templates: Sequence[str] | None = None,
    **deprecated_names,
) -> TokenBank:
    """Learn one token per class; returns a :class:`~dsi_bench.tokens.TokenBank`.

    A thin wrapper over :class:`TokenTrainer` with a :class:`TrainConfig` made from the preset.

    Args:
        data: an ``ImageFolder``-style folder, a Hugging Face dataset, or ``(path, class)`` pairs.
        classes: which classes to learn (default: all).
        generator: the diffusion model, a diffusers folder or Hub id (overrides ``pipeline.model``).
        pipeline: a :class:`~dsi_bench.pipeline.PipelineSpec` (model, device, dtype).
        preset: ``"reference"`` (default: the ImageNet* settings) or ``"fast"`` (see :data:`PRESETS`);
            ``max_steps`` (training steps per class), ``lr``, ``resolution`` override it.
        resolution: training size in px; default the generator's native size (768 px for SD2).
            More than twice native is refused unless ``allow_high_resolution=True``.
        classes_per_batch: how many classes train together (one sample each per step).
        seed: base seed of the per-class generators.
        out: bank path (``.safetensors``); with it, progress is saved every ``save_every`` steps
            and at the end of each group, and a rerun resumes. A file there that this run cannot
            continue (a bank learn-tokens did not train, one with classes this run does not learn) is
            refused unless ``overwrite=True``, which starts afresh and replaces it.
        device, dtype: override the pipeline's. In float16/bfloat16 the frozen UNet and VAE run in that
            dtype under autocast, the text encoder and the new rows stay fp32, and fp16 uses a gradient scaler.
        max_steps_this_run: stop after this many steps (time-boxed jobs; rerun to continue).
        init_word: start every token from this word's embedding (e.g. ``"object"``) instead of its
            class name's (the reference); recorded in the bank as ``training.init``.
        templates: the prompts to train in, each with ``{}`` where the token goes (default: the
            reference's 27 ``imagenet_templates_small``); recorded as ``training.templates``.
        eval_draws: if > 0, the loss over this many fixed draws per class is measured before and
            after training each group (``bank.extra["training"]["held_out_loss"]``; ``None`` when no
            group was trained in this run).

    Deprecated (0.2): ``base_model=`` (now ``generator=``), ``spec=`` (``pipeline=``), ``steps=``
    (``max_steps=``).

    Raises:
        SpecError: bad settings or data, a resolution far above native; TokenBankError: names that
            tokenize to nothing, tokens already in the tokenizer, a resumed bank of another model or
            dimension, or with unfinished classes trained with other settings.
    """
    from .compat import reject_unknown, renamed
    from .pipeline import PipelineSpec

    generator = renamed(deprecated_names, "base_model", "generator", generator, where="learn_tokens: ")
    pipeline = renamed(deprecated_names, "spec", "pipeline", pipeline, where="learn_tokens: ")
    max_steps = renamed(deprecated_names, "steps", "max_steps", max_steps, where="learn_tokens: ")
    reject_unknown(deprecated_names, "learn_tokens")
    config = TrainConfig.from_preset(preset, max_steps=max_steps, lr=lr, resolution=resolution,
                                     classes_per_batch=classes_per_batch, seed=seed, save_every=save_every,
                                     eval_draws=eval_draws, allow_high_resolution=allow_high_resolution,
                                     init_word=init_word, templates=templates)
    spec = (pipeline or PipelineSpec()).replace(model=None if generator is None else os.fspath(generator),
                                                device=device, dtype=dtype)
    from contextlib import nullcontext

    from .dist import World
    from .locks import file_lock

    world = World.from_env()  # under torchrun each rank holds the bank it writes
    with file_lock(_rank_path(Path(out), world.rank, world.world_size), "token bank") if out else nullcontext():
        return TokenTrainer(data, config, spec, classes=classes, out=out, max_steps_this_run=max_steps_this_run,
                            progress=progress, overwrite=overwrite).run()


def _check_continuable(path: Path | None, class_ids: list[int]) -> None:
    """Refuse an output path holding a bank this run would replace rather than continue.

    A run continues a bank that learn-tokens trained on classes it learns again; anything else there
    (a converted or imported bank, a bank with classes this run drops, a file that is not a bank) is
    the user's, and is replaced only with ``overwrite=True``.

    Raises:
        SpecError: the path is a folder; TokenBankError: a bank or file this run would replace.
    """
    from .errors import DsiBenchError
    from .tokens import TokenBank

    if path is None or not path.exists():
        return
    fix = "use another output path, or overwrite=True (--overwrite) to replace it"
    if path.is_dir():
        raise SpecError(f"out={str(path)!r} (--out) is a folder; pass the path of the bank file to write "
                        "(e.g. tokens.safetensors)")
    try:
        old = TokenBank.load(path)
    except DsiBenchError as e:
        raise TokenBankError(f"{str(path)!r} exists and is not a token bank this run can continue ({e}); {fix}") from e
    if not old.extra.get("training"):
        raise TokenBankError(f"{str(path)!r} holds a bank of {len(old)} classes that learn-tokens did not train "
                             f"(it has no training record); {fix}")
    dropped = sorted(set(old.class_indices) - set(class_ids))
    if dropped:
        raise TokenBankError(f"{str(path)!r} holds tokens of {len(dropped)} classes this run does not learn "
                             f"(e.g. {dropped[:3]}); writing it would drop them: {fix}")


def _optimizer_step(param, losses, rows: list[int], opts: list, scalers: list) -> None:
    """One step of the classes whose per-class ``losses`` are given (a 1-d tensor).

    ``param`` holds the raw rows ``w`` (fp32) the forward pinned; ``rows[i]`` is the row of the class
    of ``losses[i]``, ``opts[i]`` its ``(AdamW, raw row)`` and ``scalers[i]`` its gradient scaler. Each
    loss is scaled by its class's scaler, the gradient reaches ``w`` through the pinning, each AdamW
    (with its weight decay) steps its class's ``w`` unless its scaler found an inf/nan, and the
    new ``w`` goes back into ``param``.
    """
    for r, (_, view) in zip(rows, opts):  # each class's own parameter, written into the shared rows
        param.data[r] = view.data
    param.grad = None
    sum(scaler.scale(loss) for scaler, loss in zip(scalers, losses)).backward()
    for r, (opt, view), scaler in zip(rows, opts, scalers):
        view.grad = param.grad[r].clone()
        scaler.step(opt)  # unscales, then steps (skipped on inf/nan)
        scaler.update()
        param.data[r] = view.data


def _native_resolution(unet, vae) -> int:
    """The generator's native image size: the UNet's latent size x the VAE's downsampling factor."""
    return int(unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1))


def _rank_path(path: Path, rank: int, world: int) -> Path:
    return path if world == 1 else path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}")


def _merge_ranks(final: Path, world: int, class_ids: list[int], classes_per_batch: int, total: int):
    """Write the merged bank once every rank has finished its classes (any rank may; same bytes)."""
    from .tokens import TokenBank

    groups = [class_ids[i : i + classes_per_batch] for i in range(0, len(class_ids), classes_per_batch)]
    owner = {c: gi % world for gi, g in enumerate(groups) for c in g}
    banks = {}
    for r in range(world):
        path = _rank_path(final, r, world)
        if not path.is_file():
            return None
        banks[r] = TokenBank.load(path)
    steps_done = {}
    for c in class_ids:
        n = int(banks[owner[c]].extra["training"]["steps_done"].get(str(c), 0))
        if n < total:
            return None  # another rank is still training
        steps_done[str(c)] = n
    first = banks[0]
    rows = [banks[owner[c]].embedding(c) for c in class_ids]
    import torch

    training = {**first.extra["training"], "steps_done": steps_done, "ranks": world, "losses_this_run": [],
                "state_sha256": None}  # every class is finished: no state continues it
    infos = {c.index: c for b in banks.values() for c in b.class_infos}
    tokens = {c.index: t for b in banks.values() for c, t in zip(b.class_infos, b.tokens)}
    merged = TokenBank(torch.stack(rows), [infos[c] for c in class_ids], [tokens[c] for c in class_ids],
                       base_model=first.base_model, extra={"training": training}, class_list=first.class_list)
    merged.save(final)
    return merged


def _opt_tensors(opts: dict) -> dict:
    out = {}
    for c, (opt, view) in opts.items():
        st = opt.state.get(view)
        if st:
            out[c] = {f"adam.{c}.step": st["step"].detach().reshape(()).float().cpu(),
                      f"adam.{c}.exp_avg": st["exp_avg"].detach().cpu(),
                      f"adam.{c}.exp_avg_sq": st["exp_avg_sq"].detach().cpu()}
    return out


def _class_seed(seed: int, class_index: int) -> int:
    digest = hashlib.sha256(f"dsi-bench/learn-seed/v1:{seed}:{class_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _model_id(spec) -> str:
    from .pipeline import model_fingerprint

    return model_fingerprint(spec.model, spec.revision)
