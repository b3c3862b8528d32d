"""The federation folder (``dopamine coordinator init DIR``) and the coordinator's settings.

    DIR/plan.toml                 the plan (hashed into every invitation)
    DIR/coordinator.toml          where and how the coordinator serves (not part of the plan)
    DIR/tls/ca.pem, ca.key        the federation CA (ca.key 0600; keep it offline if you can)
    DIR/tls/server.pem, .key      the coordinator's HTTPS certificate and key (0600)
    DIR/signing.key               the coordinator's Ed25519 key that signs every published model (0600)
    DIR/invitations/*.invite      one per hospital (0600: each holds a one-time enrollment token), unless
                                  init wrote them to a folder the user chose; beside each, a printable
                                  *.sheet.html with the CA fingerprint to compare by phone (no secret)
    DIR/state.sqlite              enrollments, rounds, messages of the open round
    DIR/models/                   global-rNNNN.dpm (signed) and server-rNNNN.safetensors (optimizer state)
    DIR/coordinator.log           rotated to coordinator.log.1 ... (coordinator.toml: log_max_bytes, log_backups)
    DIR/service.json              while serving: pid, address and port of the running coordinator
    DIR/live.json                 while serving: who is online, last seen, bytes received (for the host view)
    DIR/hold                      present while the lead site paused the federation (core.federation.service)
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from core.config import load_toml, save_toml
from core.errors import ConfigError, FederationError
from core.federation.invitation import Invitation, write_invitation
from core.federation.plan import FederationPlan, default_colluders, default_threshold, plan_hash, save_plan
from core.federation.tls import write_federation_tls


@dataclass(frozen=True)
class FederationPaths:
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.toml"

    @property
    def settings(self) -> Path:
        return self.root / "coordinator.toml"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing.key"

    @property
    def invitations(self) -> Path:
        return self.root / "invitations"

    @property
    def state(self) -> Path:
        return self.root / "state.sqlite"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def log(self) -> Path:
        return self.root / "coordinator.log"

    @property
    def service_record(self) -> Path:
        return self.root / "service.json"

    @property
    def live(self) -> Path:
        return self.root / "live.json"

    @property
    def hold(self) -> Path:
        return self.root / "hold"

    @property
    def service_output(self) -> Path:
        """stdout and stderr of a coordinator the app started (what happens before logging is set up)."""
        return self.root / "service.out"

    def model_package(self, round: int) -> Path:
        return self.models / f"global-r{round:04d}.dpm"

    def server_state(self, round: int) -> Path:
        return self.models / f"server-r{round:04d}.safetensors"


@dataclass
class CoordinatorSettings:
    url: str
    hosts: list[str]
    port: int
    bind_host: str = "0.0.0.0"
    eval_data: str | None = None
    eval_every: int = 1
    # How long the coordinator waits in each phase before going on with whoever answered.
    key_phase_timeout_s: float = 60.0
    compute_phase_timeout_s: float = 600.0
    # None: round 1 starts once every invitation is used; else after this many seconds of serving
    # with at least the threshold enrolled.
    start_timeout_s: float | None = None
    keep_models: int = 3  # published global models kept besides the newest (older ones are deleted)
    log_max_bytes: int = 10 * 1024 * 1024  # coordinator.log is rotated past this size ...
    log_backups: int = 5  # ... keeping this many older files (coordinator.log.1 is the newest)
    schema_version: int = 1


def load_settings(paths: FederationPaths) -> CoordinatorSettings:
    settings = load_toml(CoordinatorSettings, paths.settings)
    if settings.eval_every < 1:
        raise ConfigError("eval_every in coordinator.toml must be at least 1.")
    if settings.log_max_bytes < 1024 or settings.log_backups < 1:
        raise ConfigError("log_max_bytes in coordinator.toml must be at least 1024 and log_backups at least 1.")
    return settings


@dataclass
class InitConfig:
    folder: Path
    name: str
    mode: str
    rounds: int
    hospitals: int
    hosts: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1"])
    port: int = 8443
    bind_host: str | None = None  # None: 127.0.0.1 when every host is loopback, else 0.0.0.0
    threshold: int | None = None
    colluders: int | None = None  # default 1 for 2 or more hospitals
    max_attempts: int | None = None
    model: str = "small_cnn"
    image_size: int = 64
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    sample_rate: float | None = None
    batch_size: int | None = None
    local_epochs: int | None = None
    lr: float | None = None
    momentum: float | None = None
    server_lr: float | None = None
    server_momentum: float | None = None
    server_optimizer: str | None = None
    server_lr_schedule: str | None = None
    delta: float | None = None
    accountant: str = "rdp"
    secagg: bool | None = None
    update_bound: float | None = None
    seed: int = 0
    eval_data: Path | None = None
    eval_every: int | None = None
    compute_phase_timeout_s: float | None = None
    key_phase_timeout_s: float | None = None
    hospital_names: list[str] | None = None
    federation_id: str | None = None  # None: a new random one (the app picks it first, to name the folder)
    invitations_dir: Path | None = None  # None: DIR/invitations; else this folder, which must not hold them yet


@dataclass(frozen=True)
class InitResult:
    folder: Path
    coordinator_url: str
    invitations: list[Path]
    plan: FederationPlan
    plan_hash: str
    ca_fingerprint: str
    sheets: list[Path] = field(default_factory=list)  # one printable page per hospital, beside its invitation


def new_federation_id() -> str:
    return uuid.uuid4().hex[:16]


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


# Each mode's defaults for what `coordinator init` leaves unset: the one place they are written.
# FSCDP: lr/momentum are the server optimizer's (the only optimizer); F/FPDP: the local one's, and
# server_lr 1 with momentum 0 on the averaged delta is plain FedAvg.
PLAN_DEFAULTS: dict[str, dict] = {
    "fscdp": {"sample_rate": 0.1, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5, "lr": 0.5,
              "momentum": 0.9, "server_optimizer": "sgd", "server_lr_schedule": "constant"},
    "fpdp": {"batch_size": 32, "local_epochs": 1, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5,
             "lr": 0.05, "momentum": 0.9, "server_lr": 1.0, "server_momentum": 0.0, "server_optimizer": "sgd",
             "server_lr_schedule": "constant"},
    "f": {"batch_size": 32, "local_epochs": 1, "lr": 0.05, "momentum": 0.9, "server_lr": 1.0,
          "server_momentum": 0.0, "server_optimizer": "sgd", "server_lr_schedule": "constant"},
}
MODE_SETTINGS = {  # what each mode takes at all; anything else given is refused
    "fscdp": {"sample_rate", "noise_multiplier", "max_grad_norm", "delta"},
    "fpdp": {"batch_size", "local_epochs", "noise_multiplier", "max_grad_norm", "delta"},
    "f": {"batch_size", "local_epochs"},
}


def build_plan(config: InitConfig, federation_id: str) -> FederationPlan:
    """The plan for ``config``, with each mode's defaults (PLAN_DEFAULTS) for the values left unset."""
    mode = config.mode
    if mode not in PLAN_DEFAULTS:
        raise ConfigError(f"Unknown federation mode {mode!r}; choose one of f, fpdp, fscdp.")
    defaults = PLAN_DEFAULTS[mode]
    if mode == "fscdp" and (config.batch_size is not None or config.local_epochs is not None):
        raise ConfigError("FSCDP takes one DP-SGD step per round at --sample-rate; drop --batch-size/--local-epochs.")
    if mode != "fscdp" and config.sample_rate is not None:
        raise ConfigError("F and FPDP train locally with --batch-size; --sample-rate is for FSCDP.")
    if mode == "fscdp" and (config.server_lr is not None or config.server_momentum is not None):
        raise ConfigError("FSCDP's coordinator takes the DP-SGD step with --lr and --momentum; drop --server-lr and "
                          "--server-momentum.")
    if mode == "f" and config.noise_multiplier is not None:
        raise ConfigError("Mode F adds no noise; drop --noise-multiplier or use fpdp.")

    def value(name: str):
        given = getattr(config, name)
        if name in MODE_SETTINGS["fscdp"] | MODE_SETTINGS["fpdp"] and name not in MODE_SETTINGS[mode]:
            return None
        return given if given is not None else defaults.get(name)

    colluders = config.colluders if config.colluders is not None else default_colluders(config.hospitals)
    names = config.hospital_names or [f"hospital-{i:02d}" for i in range(1, config.hospitals + 1)]
    secagg = mode == "fscdp" or bool(config.secagg)
    lr, momentum = value("lr"), value("momentum")
    plan = FederationPlan(
        name=config.name, federation_id=federation_id, mode=mode, rounds=config.rounds, hospitals=config.hospitals,
        threshold=config.threshold if config.threshold is not None else default_threshold(config.hospitals, colluders),
        colluders=colluders, hospital_names=list(names),
        max_attempts=config.max_attempts if config.max_attempts is not None else 5,
        model=config.model, image_size=config.image_size, lr=lr, momentum=momentum,
        # FSCDP: the server optimizer carries the DP-SGD step, so lr and momentum are its settings.
        server_lr=lr if mode == "fscdp" else value("server_lr"),
        server_momentum=momentum if mode == "fscdp" else value("server_momentum"),
        server_optimizer=value("server_optimizer"), server_lr_schedule=value("server_lr_schedule"),
        delta=value("delta"), accountant=config.accountant, noise_multiplier=value("noise_multiplier"),
        max_grad_norm=value("max_grad_norm"), sample_rate=value("sample_rate"), batch_size=value("batch_size"),
        local_epochs=value("local_epochs"), secagg=secagg,
        update_bound=(config.update_bound if config.update_bound is not None else 10.0)
        if secagg and mode != "fscdp" else None,
        seed=config.seed,
    )
    plan.validate()
    return plan


def init_federation(config: InitConfig) -> InitResult:
    """Create the federation folder: CA, server certificate, signing key, plan, state, invitations."""
    from core.signing import generate_private_key, public_key_bytes, save_private_key

    folder = Path(config.folder)
    if folder.exists() and any(folder.iterdir()):
        raise FederationError(f"{folder} already exists and is not empty; choose a new folder for the federation.")
    if not config.hosts:
        raise ConfigError("Give at least one host name or IP address hospitals will reach the coordinator at (--host).")
    if not 1 <= config.port <= 65535:
        raise ConfigError(f"Port {config.port} is not a valid TCP port.")
    federation_id = config.federation_id or new_federation_id()
    if len(federation_id) != 16 or any(c not in "0123456789abcdef" for c in federation_id):
        raise ConfigError("A federation id is 16 lowercase hex digits.")
    plan = build_plan(config, federation_id)
    names = plan.hospital_names
    if config.eval_data is not None and not Path(config.eval_data).exists():
        raise ConfigError(f"Evaluation data folder {config.eval_data} does not exist.")

    paths = FederationPaths(folder)
    invitations_dir = Path(config.invitations_dir) if config.invitations_dir is not None else paths.invitations
    files = {index: f"h{index:02d}-{_safe(name)}" for index, name in enumerate(names, start=1)}
    taken = [invitations_dir / f"{stem}.invite" for stem in files.values() if (invitations_dir / f"{stem}.invite").exists()]
    if taken:  # another federation's invitations: never overwrite a token someone may still need
        raise FederationError(f"{taken[0]} already exists; choose an empty folder for the invitations.")
    folder.mkdir(parents=True, exist_ok=True)
    url = _url(config.hosts[0], config.port)
    tls = write_federation_tls(paths.tls, name=config.name, hosts=list(config.hosts))
    signing_key = generate_private_key()
    save_private_key(signing_key, paths.signing_key)
    save_plan(plan, paths.plan)
    # The model before round 1 and its layout, so that the coordinator never builds it (core.federation.model_state).
    from core.federation.model_state import write_initial_state

    paths.models.mkdir(parents=True, exist_ok=True)
    write_initial_state(paths.server_state(0), plan)
    bind_host = config.bind_host or ("127.0.0.1" if set(config.hosts) <= _LOOPBACK else "0.0.0.0")
    settings = CoordinatorSettings(url=url, hosts=list(config.hosts), port=config.port, bind_host=bind_host,
                                   eval_data=str(Path(config.eval_data).resolve()) if config.eval_data else None)
    if config.eval_every is not None:
        settings.eval_every = config.eval_every
    if config.compute_phase_timeout_s is not None:
        settings.compute_phase_timeout_s = config.compute_phase_timeout_s
    if config.key_phase_timeout_s is not None:
        settings.key_phase_timeout_s = config.key_phase_timeout_s
    save_toml(settings, paths.settings)

    from core.federation.store import CoordinatorStore

    store = CoordinatorStore(paths.state)
    ca_pem = tls.ca_cert.read_text()
    digest = plan_hash(plan)
    invitations = []
    sheets = []
    from core.federation.invitation_sheet import write_sheet

    try:
        for index, name in enumerate(names, start=1):
            hospital_id = f"h{index:02d}"
            token = secrets.token_urlsafe(32)
            store.add_invitation(hospital_id, name, hashlib.sha256(token.encode()).hexdigest())
            invitation = Invitation(
                federation_id=federation_id, federation_name=config.name, coordinator_url=url,
                hospital_id=hospital_id, hospital_name=name, token=token, ca_certificate=ca_pem,
                coordinator_signing_key=public_key_bytes(signing_key), plan=plan, plan_hash=digest,
            )
            path = invitations_dir / f"{files[index]}.invite"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_invitation(path, invitation)
            invitations.append(path)
            sheets.append(write_sheet(path.with_suffix(".sheet.html"), invitation, invitation_file=path.name))
        store.update_meta({"status": "enrolling", "round": 0, "attempt": 0, "phase": "", "model_round": 0,
                           "federation_id": federation_id, "hospital_ids": [f"h{i:02d}" for i in range(1, len(names) + 1)]})
    finally:
        store.close()
    from core.federation.tls import certificate_fingerprint

    return InitResult(folder=folder, coordinator_url=url, invitations=invitations, plan=plan, plan_hash=digest,
                      ca_fingerprint=certificate_fingerprint(ca_pem), sheets=sheets)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
