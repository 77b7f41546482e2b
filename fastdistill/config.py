"""Distillation configuration and the named presets (the paper's experiments)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from fastdistill.distilled import LABEL_INITS
from fastdistill.engine.hypergrad import ENGINES
from fastdistill.engine.init import INIT_SCHEMES


@dataclass
class DistillConfig:
    """Everything that defines a distillation run. Defaults follow docs/algorithm.md §1-3."""

    # data and model
    dataset: str = "digits"
    image_size: int | None = None  # images: square resize
    seq_len: int | None = None  # text: pad/truncate length (None: longest training text)
    vectors: str = "glove.6B.50d"  # text: pretrained word vectors (name or path)
    max_vocab: int | None = None  # text: vocabulary cap
    min_freq: int = 1  # text: minimum token count in the training split
    model: str = "lenet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # the distilled set
    images_per_class: int = 1
    classes_per_step: int | None = None
    steps: int = 1
    epochs: int = 3
    label_mode: Literal["soft", "hard"] = "soft"
    label_init: Literal["onehot", "smoothed", "random"] = "onehot"
    softmax_targets: bool = False
    distill_lr: float = 0.02
    # initial weights p(w0)
    init: Literal["fixed", "random"] = "fixed"
    init_scheme: Literal["xavier", "kaiming", "default"] = "xavier"
    init_gain: float = 1.0
    nets_per_iteration: int = 1
    # outer optimisation
    lr: float = 0.01
    betas: tuple[float, float] = (0.5, 0.999)
    outer_epochs: int = 400
    iterations: int | None = None
    decay_epochs: int = 40
    decay_factor: float = 0.5
    real_batch_size: int = 1024
    engine: Literal["adjoint", "unroll"] = "adjoint"
    checkpoint_every: int | None = None  # adjoint: uniform schedule, every k-th weight vector
    checkpoint_slots: int | None = None  # adjoint: binomial schedule slots (None: default)
    outer_chunk: int | None = None  # adjoint: real-batch outer pass in chunks (memory)
    checkpoint_memory_mb: float | None = None  # adjoint: stored weights budget (None: 256 MiB)
    # ranks (torchrun): "ordered" gives the same set on any number of ranks (distributed.py)
    reduce: Literal["ordered", "allreduce"] = "ordered"
    rank_units: int | None = None  # units an iteration is cut into (None: nets, or 8 pieces)
    # consecutive iterations with a non-finite outer loss or hypergradient (a draw of random
    # nets that diverges inside the unroll) skipped, update and all, before the run stops
    nonfinite_skips: int = 5
    # evaluation
    eval_nets: int = 200
    validation: float = 0.0  # fraction of the training set held out to keep the best set
    validate_every: int = 100  # iterations between validation checks (when validation > 0)
    stop_at: float | None = None  # stop once validation accuracy reaches this (0-1]
    controls: bool = True  # also test the set with hard labels, and random real of its size
    full_data_epochs: int = 0  # > 0: also train the full-data reference of r (max epochs)
    full_data_lr: float = 1e-3  # its AdamW step (cosine-decayed to 0 over the epochs)
    full_data_batch_size: int = 128
    full_data_weight_decay: float = 0.0
    full_data_validation: float = 0.1  # held-out fraction that picks the epoch kept
    full_data_patience: int | None = 3  # epochs without a validation gain before stopping
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        self._check_types()
        self._check_choices()
        self._check_ranges()
        self._check_model()

    def _check_types(self) -> None:
        # types first (values from --set or a config file are JSON): one clear error per field
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _expected(value, _field_types()[f.name])
            if expected is not None:
                example = _example(f)
                raise ValueError(
                    f"{f.name}={json_value(value)}: expected {expected} (e.g. {f.name}={example})"
                )
            if isinstance(value, int) and not isinstance(value, bool) and _is_float(f.name):
                setattr(self, f.name, float(value))
        self.betas = tuple(float(b) for b in self.betas)  # JSON gives lists

    def _check_choices(self) -> None:
        checks = {
            "label_mode": (self.label_mode, ("soft", "hard")),
            "label_init": (self.label_init, LABEL_INITS),
            "init": (self.init, ("fixed", "random")),
            "init_scheme": (self.init_scheme, INIT_SCHEMES),
            "engine": (self.engine, ENGINES),
            "dtype": (self.dtype, ("float32", "float64")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {tuple(allowed)}")

    def _check_ranges(self) -> None:
        for name in (
            "images_per_class",
            "steps",
            "epochs",
            "nets_per_iteration",
            "real_batch_size",
            "decay_epochs",
            "outer_epochs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.validation < 1.0:
            raise ValueError(f"validation must be a fraction in [0, 1), got {self.validation}")
        if self.stop_at is not None:
            if not 0.0 < self.stop_at <= 1.0:
                raise ValueError(f"stop_at is a validation accuracy in (0, 1], got {self.stop_at}")
            if self.validation == 0.0:
                raise ValueError("stop_at needs a validation split: also set validation=0.1")
        if self.nonfinite_skips < 0:
            raise ValueError(f"nonfinite_skips must be >= 0, got {self.nonfinite_skips}")
        if self.validate_every < 1:
            raise ValueError(f"validate_every must be >= 1, got {self.validate_every}")
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        for name in ("distill_lr", "lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.outer_chunk is not None and self.outer_chunk < 1:
            raise ValueError(f"outer_chunk must be >= 1 (or None), got {self.outer_chunk}")
        for name in (
            "eval_nets",
            "min_freq",
            "image_size",
            "seq_len",
            "max_vocab",
            "classes_per_step",
            "checkpoint_every",
            "checkpoint_slots",
            "rank_units",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self._check_optimiser_ranges()

    def _check_optimiser_ranges(self) -> None:
        if self.full_data_epochs < 0:
            raise ValueError(f"full_data_epochs must be >= 0, got {self.full_data_epochs}")
        if not self.full_data_lr > 0 or self.full_data_batch_size < 1:
            raise ValueError(
                f"full_data_lr must be > 0 and full_data_batch_size >= 1, got "
                f"{self.full_data_lr} and {self.full_data_batch_size}"
            )
        if not 0.0 <= self.full_data_validation < 1.0 or self.full_data_weight_decay < 0:
            raise ValueError(
                f"full_data_validation must be in [0, 1) and full_data_weight_decay >= 0, got "
                f"{self.full_data_validation} and {self.full_data_weight_decay}"
            )
        if self.full_data_patience is not None and self.full_data_patience < 1:
            raise ValueError(f"full_data_patience must be >= 1, got {self.full_data_patience}")
        if not 0 <= self.seed < 2**62:
            raise ValueError(f"seed must be in [0, 2**62), got {self.seed}")
        if self.init_gain <= 0:
            raise ValueError(f"init_gain must be positive, got {self.init_gain}")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(f"decay_factor must be in (0, 1], got {self.decay_factor}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")

    def _check_model(self) -> None:
        from fastdistill.models.registry import ALL_MODEL_NAMES

        if self.model.lower() not in ALL_MODEL_NAMES:
            hint = _did_you_mean(self.model, ALL_MODEL_NAMES)
            raise ValueError(f"model={self.model!r} is not one of {ALL_MODEL_NAMES}{hint}")

    def data_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``fastdistill.data.load_dataset`` beyond name and root."""
        from fastdistill.data.text import is_text_dataset

        if is_text_dataset(self.dataset):
            return {
                "seq_len": self.seq_len,
                "vectors": self.vectors,
                "max_vocab": self.max_vocab,
                "min_freq": self.min_freq,
            }
        return {"image_size": self.image_size} if self.image_size is not None else {}

    def hypergradient_options(self) -> dict[str, Any]:
        """The keyword arguments of ``fastdistill.engine.hypergradient`` this run sets."""
        memory = self.checkpoint_memory_mb
        return {
            "engine": self.engine,
            "checkpoint_every": self.checkpoint_every,
            "checkpoint_slots": self.checkpoint_slots,
            "checkpoint_memory": None if memory is None else int(memory * 2**20),
            "outer_chunk": self.outer_chunk,
        }

    @property
    def total_steps(self) -> int:
        return self.steps * self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a configuration is a JSON object, got {type(d).__name__}")  # noqa: TRY004
        check_keys(d)
        return cls(**d)

    def replace(self, **changes: Any) -> DistillConfig:
        """A copy with ``changes``; unknown keys and wrong types raise a ``ValueError`` naming
        the key, the value and the expected type."""
        check_keys(changes)
        return dataclasses.replace(self, **changes)


def json_value(value: Any) -> str:
    """``value`` as it is written after ``--set KEY=`` (JSON when it can be)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(d: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming the first unknown configuration key (and a close one)."""
    known = [f.name for f in dataclasses.fields(DistillConfig)]
    for key in d:
        if key not in known:
            hint = _did_you_mean(key, known) or f"; known keys: {', '.join(known)}"
            raise ValueError(f"unknown configuration key {key!r}{hint}")


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(DistillConfig)


def _is_float(name: str) -> bool:
    tp = _field_types()[name]
    return tp is float or float in typing.get_args(tp)


def _expected(value: Any, tp: Any) -> str | None:
    """None when ``value`` fits the annotation ``tp``, else what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return None
    if origin in (Union, types.UnionType):
        wanted = [_expected(value, a) for a in args]
        return None if None in wanted else " or ".join(w for w in wanted if w)
    if tp is type(None):
        return None if value is None else "null"
    if origin is Literal:
        return None if value in args else "one of " + ", ".join(json.dumps(a) for a in args)
    if tp is bool:
        return None if isinstance(value, bool) else "true or false"
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok and math.isfinite(value) else "a finite number"
    if tp is str:
        return None if isinstance(value, str) else "a string"
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return f"a list of {len(args)} numbers"
        if len(args) == 2 and args[1] is Ellipsis:
            bad = any(_expected(v, args[0]) for v in value)
            return "a list of numbers" if bad else None
        if len(value) != len(args) or any(_expected(v, a) for v, a in zip(value, args)):
            return f"a list of {len(args)} numbers"
        return None
    if origin is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        return None if ok else "a JSON object"
    return None


def _example(f: dataclasses.Field) -> str:
    """A valid value for field ``f``, as written after ``--set KEY=``."""
    if f.default not in (dataclasses.MISSING, None):
        return json_value(f.default)
    tp = _field_types()[f.name]
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict:
        return '{"hidden": [32]}'
    for t, ex in ((int, "1"), (float, "1.0"), (str, '"name"')):
        if t in args:
            return ex
    return "null"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: DistillConfig
    paper_accuracy: str | None = None


def _image_presets() -> list[Preset]:
    # 400 passes over MNIST (58 batches of 1024 each: 23,200 iterations), Adam 0.01 halved every
    # 100 passes. The original code's README halves every 40: measured side by side, that run
    # was at 87.0% after 5,000 iterations (rate already quartered) where this one was at 92.0%;
    # this schedule ended at 95.2% for 10 images (RESULTS.md; the original code: 93.6%). The
    # fixed-init rows train twice as long (800 passes halved every 200): 10 images 95.23% ->
    # 97.00%, 5 images 89.49% -> 92.30%, 100 images 98.51% -> 98.58%.
    mnist = DistillConfig(dataset="mnist", model="lenet", decay_epochs=100, outer_epochs=400)
    mnist_fixed = mnist.replace(decay_epochs=200, outer_epochs=800)
    cifar = DistillConfig(
        dataset="cifar10", model="alexcifarnet", decay_epochs=40, outer_epochs=400
    )
    rows = [
        (
            "mnist-lenet-fixed-10",
            "MNIST, LeNet, fixed init, 10 images (1 step x 3 epochs)",
            mnist_fixed.replace(steps=1, epochs=3),
            "96.13% (DD: 93.76%)",
        ),
        (
            # one-hot labels cover only 5 of the 10 classes; labels smoothed over all ten and
            # the best set kept on a 10% validation split: 89.49% (one-hot, no split: 88.10%)
            "mnist-lenet-fixed-5",
            "MNIST, LeNet, fixed init, 5 images for 10 classes",
            mnist_fixed.replace(
                steps=1,
                epochs=3,
                classes_per_step=5,
                label_init="smoothed",
                validation=0.1,
                validate_every=1160,
            ),
            "91.56%",
        ),
        (
            "mnist-lenet-random-100",
            "MNIST, LeNet, random init, 100 images (10 steps x 3 epochs)",
            mnist.replace(steps=10, epochs=3, init="random", nets_per_iteration=4, distill_lr=0.02),
            "82.75 +- 2.75% (DD: 79.5 +- 8.1%)",
        ),
        (
            "mnist-lenet-fixed-100",
            "MNIST, LeNet, fixed init, 100 images (10 steps x 3 epochs)",
            mnist_fixed.replace(steps=10, epochs=3),
            "98.6% (DD: 96.6%)",
        ),
        (
            "cifar10-alexcifarnet-fixed-100",
            "CIFAR-10, AlexCifarNet, fixed init, 100 images",
            cifar.replace(steps=10, epochs=3),
            "60.0% (DD: 54.0%)",
        ),
        (
            "cifar10-alexcifarnet-random-100",
            "CIFAR-10, AlexCifarNet, random init, 100 images",
            cifar.replace(steps=10, epochs=3, init="random", nets_per_iteration=4),
            "39.82 +- 0.83% (DD: 36.8 +- 1.2%)",
        ),
    ]
    out = []
    for name, desc, cfg, paper in rows:
        out.append(Preset(name, desc + ", soft labels", cfg, paper))
        out.append(
            Preset(
                f"{name}-hard",
                desc + ", hard labels (original DD)",
                cfg.replace(label_mode="hard", label_init="onehot"),
            )
        )
    return out


def _text_presets() -> list[Preset]:
    """The paper's text rows (docs/algorithm.md §8). Vectors: the 50-d GloVe 6B that installs offline (the
    paper used 100-d GloVe); real batches of 1024 sentences."""
    rows = [
        # name, dataset, model, seq_len, images_per_class, steps, epochs, paper ratio
        ("imdb-textconvnet-2", "imdb", "textconvnet", 400, 1, 1, 3, "r = 89.9 fixed, 80.0 +- 6.3 random"),
        ("imdb-textconvnet-20", "imdb", "textconvnet", 400, 1, 10, 3, "r = 91.5 fixed, 85.2 +- 3.2 random"),
        ("sst5-birnn-5", "sst5", "birnn", 50, 1, 1, 3, "r = 87.7 fixed, 57.0 +- 5.7 random"),
        ("sst5-birnn-100", "sst5", "birnn", 50, 2, 10, 3, None),
        ("trec6-bilstm-6", "trec6", "bilstm", 30, 1, 1, 3, "r = 97.8 fixed, 69.3 +- 9.8 random"),
        ("trec6-bilstm-120", "trec6", "bilstm", 30, 20, 1, 2, None),
        ("trec50-textconvnet-500", "trec50", "textconvnet", 30, 10, 1, 3, None),
        ("trec50-textconvnet-1000", "trec50", "textconvnet", 30, 4, 5, 1, "r = 67.4 fixed, 42.1 +- 2.1 random"),
    ]  # fmt: skip
    out = []
    for name, dataset, model, seq_len, ipc, steps, epochs, paper in rows:
        base = DistillConfig(
            dataset=dataset,
            model=model,
            seq_len=seq_len,
            images_per_class=ipc,
            steps=steps,
            epochs=epochs,
            outer_epochs=100,
            decay_epochs=30,
        )
        # The real-batch pass over 1024 sentences is the peak of a text iteration (IMDB shape
        # 822 MB, TREC shape with torch's LSTM kernels 1,072 MB); in chunks of 256 it is ~4x
        # smaller at the same speed on a CPU (RESULTS.md).
        base = base.replace(outer_chunk=256)
        if dataset == "trec6":
            # TREC-6 has 5 real batches per pass. The defaults (100 passes, Adam 0.01 halved
            # every 30, inner steps from 0.02) end with the loss still falling (60.6% for 6
            # sentences); inner steps from 0.2 and 200 passes halved every 60: 77.2%; Adam 0.02
            # with the best set kept on a 10% validation split: 78.8% (400 passes: 81.2%);
            # Adam 0.05, 300 passes halved every 90: 81.6%, r = 90.9; Adam 0.1 (the original's
            # text setting) with inner steps from 1.0: 84.8% / 83.6% (seeds 0 / 1), and over 600
            # passes halved every 180: 85.6%, r = 94.9 (RESULTS.md; the original code: 84.4%).
            base = base.replace(
                distill_lr=1.0,
                lr=0.1,
                outer_epochs=600,
                decay_epochs=180,
                validation=0.1,
                validate_every=50,
            )
        family, size = name.rsplit("-", 1)
        out.append(Preset(f"{family}-fixed-{size}", f"{dataset}, {model}, fixed init, {size} "
                          "sentences", base, paper))  # fmt: skip
        out.append(Preset(f"{family}-random-{size}", f"{dataset}, {model}, random init, {size} "
                          "sentences", base.replace(init="random", nets_per_iteration=4)))  # fmt: skip
    return out


# The demo: real 8x8 digits upscaled to LeNet's 28x28. 20% of the 1,347 training digits are held
# out to keep the best set (the fixed-init accuracy of so small a problem swings by several
# points between nearby iterations); batches of 256 of the other 1,077 (4 per pass), 750 passes
# = 3,000 iterations, Adam at 0.02 halved every 125 passes.
_DIGITS = DistillConfig(
    dataset="digits",
    image_size=28,
    model="lenet",
    steps=1,
    epochs=3,
    lr=0.02,
    real_batch_size=256,
    outer_epochs=750,
    decay_epochs=125,
    validation=0.2,
    validate_every=100,
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "digits-lenet-fixed-10",
            "sklearn digits (embedded, 8x8 upscaled to 28x28), LeNet, fixed init, 10 soft-label "
            "images; the demo: a few minutes on a laptop CPU",
            _DIGITS,
        ),
        Preset(
            "digits-lenet-fixed-10-hard",
            "the demo with hard, frozen labels (original DD), for comparison",
            _DIGITS.replace(label_mode="hard"),
        ),
        *_image_presets(),
        *_text_presets(),
    ]
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; run `fastdistill presets` to list them"
        ) from None


# -- configuration files (``fastdistill distill --config run.toml``) ---------------------------
#: The file key naming the preset a file starts from (not a DistillConfig field).
PRESET_KEY = "preset"
#: The file key listing fields set to null (TOML has no null), e.g. ``unset = ["seq_len"]``.
UNSET_KEY = "unset"


def _parse_config_text(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ValueError(
                    f"{path}: TOML configs need Python 3.11+ or the tomli package; or use .json"
                ) from None
        return tomllib.loads(text)
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"{path}: YAML configs need PyYAML (pip install pyyaml); or write TOML"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(str(err)) from None
    if suffix == ".json":
        return json.loads(text)
    raise ValueError(f"{path}: unknown config format {suffix!r}; use .toml, .yaml or .json")


def load_config_file(path: str | Path) -> tuple[dict[str, Any], str | None]:
    """``(fields, preset)`` of a TOML (``.toml``), YAML (``.yaml``/``.yml``, when PyYAML is
    installed) or JSON file of flat configuration fields. ``preset = "NAME"`` names a preset
    the file's fields override; ``unset = [...]`` sets fields to null. The keys and the types
    of the values are checked (one-line ``ValueError`` naming the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        raw = _parse_config_text(path, path.read_text(encoding="utf-8"))
    except ValueError as err:  # tomllib's and json's decode errors are ValueErrors
        if str(err).startswith(str(path)):
            raise
        kind = path.suffix[1:].upper()
        raise ValueError(f"{path}: not valid {kind} ({_first_line(err)})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(  # noqa: TRY004 (a user's file: one-line ValueError)
            f"{path}: expected a table of KEY = VALUE fields, got {type(raw).__name__}"
        )
    fields = dict(raw)
    preset = fields.pop(PRESET_KEY, None)
    if preset is not None and not isinstance(preset, str):
        raise ValueError(f"{path}: {PRESET_KEY} = {json_value(preset)}: expected a preset name")
    unset = fields.pop(UNSET_KEY, [])
    if not isinstance(unset, list) or not all(isinstance(k, str) for k in unset):
        raise ValueError(f"{path}: {UNSET_KEY} must be a list of field names, got {unset!r}")
    for key in unset:
        if key in fields:
            raise ValueError(f"{path}: {key!r} is both set and listed in {UNSET_KEY}")
        fields[key] = None
    try:
        check_keys(fields)
        DistillConfig(**fields)  # types and values of the file alone
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return fields, preset


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def resolve_config(
    preset: str | None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    where: str = "--set",
) -> tuple[DistillConfig, str | None]:
    """The run's configuration: the preset's < the config file's fields < ``overrides``.

    ``preset`` (e.g. ``--preset``) wins over the file's ``preset`` key; with neither, the
    DistillConfig defaults are the base. Returns ``(config, preset name or None)``."""
    fields: dict[str, Any] = {}
    file_preset = None
    if config_file is not None:
        fields, file_preset = load_config_file(config_file)
    name = preset or file_preset
    base = get_preset(name).config if name else DistillConfig()
    try:
        config = base.replace(**fields)
    except ValueError as err:
        raise ValueError(f"{config_file}: {err}") from None
    if overrides:
        try:
            config = config.replace(**overrides)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return config, name


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite number {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    if value is None:
        raise ValueError("TOML has no null (list the field in `unset` instead)")
    raise ValueError(f"cannot write {type(value).__name__} to TOML")


def config_to_toml(config: DistillConfig, *, comment: str | None = None) -> str:
    """Every field of ``config`` as TOML (nulls listed in ``unset``): the file
    ``fastdistill distill --config`` reads back to the same configuration."""
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    d = config.to_dict()
    unset = [k for k, v in d.items() if v is None]
    for key, value in d.items():
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    lines.append(f"{UNSET_KEY} = {_toml_value(unset)}")
    return "\n".join(lines) + "\n"


def write_config(config: DistillConfig, path: str | Path, *, comment: str | None = None) -> Path:
    """Write :func:`config_to_toml` to ``path`` (atomically: temp file + rename)."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(config_to_toml(config, comment=comment))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
