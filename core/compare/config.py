"""What a comparison runs: the modes, the split, the scale and the privacy settings (no torch here: the
app builds and checks one on its UI thread; core.compare.run checks the model name when it starts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from core.device import DEFAULT_DEVICE, check_device_name
from core.errors import ConfigError

MODES = ("c", "cdp", "f", "fpdp", "fscdp")
PRIVATE = ("cdp", "fpdp", "fscdp")
FEDERATED = ("f", "fpdp", "fscdp")


@dataclass
class CompareConfig:
    out: Path
    data: Path | None = None  # None: synthetic fundus images drawn into out/data
    labels_csv: Path | None = None
    hospitals: int = 10
    modes: tuple[str, ...] = MODES
    seeds: int = 5
    split: str = "iid"  # iid | dirichlet:ALPHA | folders
    model: str = "small_cnn"
    image_size: int = 32
    noise_multiplier: float = 1.0  # every DP mode's sigma, unless target_epsilon calibrates it per mode
    target_epsilon: float | None = None
    delta: float = 1e-4
    accountant: str = "rdp"
    epochs: int = 15  # C and CDP; FSCDP runs as many rounds as CDP takes steps (equal q and T)
    rounds: int = 15  # F and FPDP
    local_epochs: int = 5
    fraction: float = 0.5
    batch_size: int = 128  # C and CDP; FSCDP samples the union at CDP's rate, 1 / (batches per epoch)
    local_batch_size: int = 32  # F and FPDP, at each hospital
    lr_search: bool = True
    synthetic_images: int = 1500
    test_fraction: float = 0.2
    quick: bool = False  # a smoke run: few images, epochs and rounds, one seed, two candidates
    threads: int | None = None
    device: str = DEFAULT_DEVICE  # where the models compute (core.device); not part of a resume's settings

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.data = Path(self.data) if self.data is not None else None
        self.labels_csv = Path(self.labels_csv) if self.labels_csv is not None else None
        self.modes = tuple(self.modes)

    def effective(self) -> CompareConfig:
        """The settings the run uses: --quick shrinks the work."""
        if not self.quick:
            return self
        return replace(self, quick=False, seeds=min(self.seeds, 1), epochs=min(self.epochs, 4),
                       rounds=min(self.rounds, 3), local_epochs=min(self.local_epochs, 1),
                       synthetic_images=min(self.synthetic_images, 400), hospitals=min(self.hospitals, 4),
                       batch_size=min(self.batch_size, 32))

    def validate(self) -> None:
        from core.compare.splits import parse_split
        from core.privacy.accountant import check_accountant_name, check_delta_value

        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes or len(set(self.modes)) != len(self.modes):
            raise ConfigError(f"--modes {','.join(self.modes)}: name each of c, cdp, f, fpdp, fscdp at most once.")
        parse_split(self.split)
        checks = [(self.hospitals >= 2 or self.split == "folders", "--hospitals must be at least 2"),
                  (self.seeds >= 1, "--seeds must be at least 1"),
                  (self.image_size >= 16, "--image-size must be at least 16"),
                  (self.epochs >= 1 and self.rounds >= 1 and self.local_epochs >= 1, "epochs and rounds must be >= 1"),
                  (0 < self.fraction <= 1, "--fraction must be in (0, 1]"),
                  (self.batch_size >= 1 and self.local_batch_size >= 1, "batch sizes must be at least 1"),
                  (self.noise_multiplier > 0, "--noise-multiplier must be positive"),
                  (self.target_epsilon is None or self.target_epsilon > 0, "--target-epsilon must be positive"),
                  (0 < self.test_fraction < 1, "the test fraction must be in (0, 1)"),
                  (self.synthetic_images >= 20 * self.hospitals,
                   "synthetic runs need at least 20 images per hospital")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + ".")
        check_accountant_name(self.accountant)
        check_delta_value(self.delta)
        check_device_name(self.device)
        if self.labels_csv is not None and self.data is None:
            raise ConfigError("--labels-csv needs DATA, the folder of images it labels.")

    def fingerprint(self) -> dict:
        """What must match for a resume: everything but the output folder, the seed count, threads and device."""
        values = asdict(self)
        for name in ("out", "seeds", "threads", "device"):
            values.pop(name)
        values["modes"] = list(self.modes)
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
