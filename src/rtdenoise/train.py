"""Training loop: instances made on the fly, held-out validation, checkpoints, resume, DDP.

Runs unchanged under ``torchrun --nproc_per_node N -m rtdenoise.cli train ...``: each rank
draws its own instances (seeded by rank), gradients are averaged by
DistributedDataParallel, rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rtdenoise.atomic import atomic_path
from rtdenoise.model.checkpoint import Checkpoint
from rtdenoise.model.config import ModelConfig
from rtdenoise.synth.dataset import SpectralDataset
from rtdenoise.synth.noise import DetectorNoise
from rtdenoise.synth.spectral import SpectralConfig


@dataclass
class TrainConfig:
    """How to train; stored in the checkpoint's provenance."""

    steps: int = 20_000  # optimizer steps at most
    minutes: float | None = None  # wall-clock budget; stops at whichever comes first
    batch: int = 16  # instances per step (per rank)
    window: int | None = None  # frames per instance; None: 256 for spectra (51 s at 5 Hz), 32 for movies (1 s at 30 Hz)
    patch: tuple[int, int] = (64, 64)  # movies: pixels per instance (the model runs on any frame size)
    lr: float = 2e-3  # peak AdamW learning rate
    warmup: int = 200  # linear warm-up steps: avoids the early plateau large steps cause
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # global norm; protects against rare extreme instances
    val_every: int = 250  # steps between validations (and checkpoints)
    val_instances: int = 48  # held-out instances, fixed by the seed
    seed: int = 0
    workers: int = 1  # processes making instances beside the training loop (0: inline)
    threads: int | None = None  # torch intra-op threads; None = the cores the workers leave
    # Share of instances whose front end starts settled, as a live stream's is after its first
    # 2·horizon frames (per-element front ends only: images). Without it every instance starts
    # cold and the settled regime users run in is never trained (horizon 300 > any window).
    settled: float = 0.0
    # Where the optimizer runs: "cpu", or "cuda" (an NVIDIA GPU; the workers still draw the scenes
    # on the CPU, so give it several). The checkpoint loads anywhere either way.
    device: str = "cpu"
    # On a GPU, movies with PMT noise get their noise and front end there, the workers drawing
    # only scenes (a quarter of an instance's CPU time); False: all on the CPU workers, as on a CPU.
    instances_on_device: bool = True
    # Movies: weight of a second loss term, the error of 8 × 8-pixel block means (what a neuron's
    # trace averages), beside the per-pixel error; 0: per-pixel error alone.
    pooled_loss: float = 0.0
    # Spectra, a model that takes its sensor's spectrum (ModelConfig.sensor): each instance's is
    # given shifted by a uniform draw within ± this many nm, so the model tolerates a lab's
    # spectrum that far off (0: exact).
    sensor_shift_nm: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cosine_decay(peak: float, done: float) -> float:
    """``peak`` decayed along a cosine to 2 % of it, ``done`` (0..1) of the way."""
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 2 % of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cosine_decay(cfg.lr, (step - cfg.warmup) / max(1, total - cfg.warmup))


SETTLED_BURN = 16  # frames of a settled instance that only warm the network's states (its leaky integrators' τ)


def normalize_batch(noisy: np.ndarray, target: np.ndarray, mcfg: ModelConfig, *, settled: float = 0.0,
                    rng: np.random.Generator | None = None, sensor: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Front end over a batch: (features, target in the network's units).

    ``sensor`` ``(B, W)``: each instance's sensor spectrum, for a model that takes one
    (``ModelConfig.sensor``): it learns on every instance's own.

    Each instance starts cold, or with probability ``settled`` settled: the running mean set
    to each pixel's lowest expected count in the window (its level before any transient of the
    window: the window's mean would tell the network of transients to come) plus the error a
    settled mean has (the noise's variance ÷ (2·horizon − 1), an EMA's), its count at
    ``horizon``. A settled instance's first :data:`SETTLED_BURN` targets are NaN: those frames
    warm the network's states and :func:`lagged_loss` leaves them out.
    """
    fe = mcfg.frontend(noisy.shape[0], noisy.shape[2:])
    if fe.rank and fe.sensor is not None:
        if sensor is None:
            raise ValueError("this model takes each instance's sensor spectrum: give sensor=")
        fe.sensor[:] = sensor
    if settled:
        rng = rng or np.random.default_rng()
    warm = rng.random(noisy.shape[0]) < settled if settled else np.zeros(noisy.shape[0], dtype=bool)
    if warm.any():
        if fe.rank:
            raise ValueError("settled starts need a per-element front end (images), not a spectral subspace")
        f = 1.0 / (2 * fe.horizon - 1)
        for i in np.flatnonzero(warm):
            sd = np.sqrt(f * (noisy[i].astype(np.float64) - target[i]).var(axis=0))
            fe.mean[i] = target[i].astype(np.float64).min(axis=0) + sd * rng.standard_normal(sd.shape)
            fe.count[i] = fe.horizon
    norm = fe.normalize(noisy)
    tn = fe.target(target, norm)
    if warm.any():
        tn[warm, :SETTLED_BURN] = np.nan
    return torch.from_numpy(norm.features), torch.from_numpy(tn)


def normalize_batch_on(noisy: torch.Tensor, target: torch.Tensor, mcfg: ModelConfig, *,
                       settled: float = 0.0, generator: torch.Generator | None = None,
                       graphs: "FrontEndGraphs | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`normalize_batch` for movies already on a torch device (a GPU), ``(B, T, H, W)``
    float32: the same front end (:class:`~rtdenoise.backends.torch_engine.TorchFrontEnd`, the
    numpy one's arithmetic) and the same settled starts, drawn by ``generator`` (torch's).
    ``graphs`` (on a CUDA device) replays the front end as one CUDA graph per batch shape."""
    fe = mcfg.frontend(noisy.shape[0], tuple(noisy.shape[2:]))
    if fe.rank:
        raise ValueError("normalize_batch_on is for images; a spectral subspace front end runs on the host")
    mean = torch.tensor(fe.mean, dtype=torch.float32, device=noisy.device)
    count = torch.tensor(fe.count, dtype=torch.float64, device=noisy.device)
    warm = None
    if settled:  # (no branch on the data: a GPU need not wait for it)
        dev = noisy.device
        warm = torch.rand(noisy.shape[0], generator=generator, device=dev) < settled
        f = 1.0 / (2 * fe.horizon - 1)
        sd = torch.sqrt(f * (noisy.double() - target).var(dim=1, unbiased=False))
        start = target.double().min(dim=1).values + sd * torch.randn(sd.shape, generator=generator, dtype=sd.dtype, device=dev)
        mean = torch.where(warm.view(-1, 1, 1), start.to(mean.dtype), mean)
        count = torch.where(warm, float(fe.horizon), count)
    if graphs is not None:
        feat, b, s, tfe = graphs.run(mcfg, fe, noisy, mean, count)
    else:
        feat, b, s, tfe = _normalize_eager(fe, noisy, mean, count)
    t = (target - tfe.offset) / tfe.gain if tfe.photons else target
    tn = ((t - b) / s).to(torch.float32)
    if tfe.pad:
        tn = F.pad(tn, tfe.pad, mode="replicate")
    if warm is not None:  # a settled instance's first frames only warm the network's states
        burn = torch.arange(tn.shape[1], device=tn.device) < SETTLED_BURN
        tn = torch.where((warm[:, None] & burn).view(*warm.shape, -1, *(1,) * (tn.ndim - 2)), float("nan"), tn)
    return feat, tn


def _front_end_on(fe, device: torch.device):
    from rtdenoise.backends.torch_engine import TorchFrontEnd

    tfe = TorchFrontEnd(fe, device)
    tfe.lag = 0  # each frame's own statistics, which its target is in (the network's lag is the loss's)
    return tfe


def _normalize_eager(fe, noisy, mean, count):
    tfe = _front_end_on(fe, noisy.device)
    _restart(tfe, mean, count)
    feat, b, s, _ = tfe.normalize(noisy)
    return feat, b, s, tfe


class FrontEndGraphs:
    """The training instances' front end on a CUDA device as CUDA graphs, one per batch shape.

    Its recurrence runs frame by frame, each frame about a hundred small kernels (the motion
    following's Fourier shifts): 48 frames of a batch of 32 took 72 ms on an H200, nearly all
    of it launching them. A graph launches them all at once. Each batch is copied into the
    graph's own input and start state, replayed, and its outputs copied out: the same
    arithmetic as :func:`_normalize_eager` (a GPU test checks it). Off a CUDA device, or
    where capturing fails (said once, as a warning), it runs them eagerly."""

    def __init__(self):
        self._graphs: dict[tuple, tuple] = {}
        self.failed: str | None = None

    def run(self, mcfg: ModelConfig, fe, noisy, mean, count):
        if noisy.device.type != "cuda" or self.failed:
            return _normalize_eager(fe, noisy, mean, count)
        key = (tuple(noisy.shape), noisy.dtype, str(noisy.device), repr(sorted(mcfg.to_dict().items())))
        with torch.cuda.device(noisy.device):  # (captures on the current device: make it the batch's)
            if key not in self._graphs:
                try:
                    self._graphs[key] = self._capture(fe, noisy)
                except Exception as e:  # noqa: BLE001 (any capture failure: the eager path is the same arithmetic)
                    import warnings

                    self.failed = f"{type(e).__name__}: {e}"
                    warnings.warn(f"the front end runs without a CUDA graph (capturing it failed: {self.failed})", stacklevel=2)
                    return _normalize_eager(fe, noisy, mean, count)
            graph, tfe, x, out = self._graphs[key]
            x.copy_(noisy)
            _restart(tfe, mean, count)
            graph.replay()
            return out[0].clone(), out[1].clone(), out[2].clone(), tfe

    @staticmethod
    def _capture(fe, noisy):
        tfe = _front_end_on(fe, noisy.device)
        x = noisy.clone()
        mean, count = tfe.mean.clone(), tfe.count.clone()
        side = torch.cuda.Stream(noisy.device)
        side.wait_stream(torch.cuda.current_stream(noisy.device))
        with torch.cuda.stream(side):  # FFT plans and the allocator's blocks made before capturing
            for _ in range(2):
                _restart(tfe, mean, count)
                tfe.normalize(x)
        torch.cuda.current_stream(noisy.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        _restart(tfe, mean, count)
        # thread-local: the DataLoader's pin-memory thread goes on calling CUDA while this captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            feat, b, s, _ = tfe.normalize(x)
        return graph, tfe, x, (feat, b, s)


def _restart(tfe, mean, count) -> None:
    """A front end's state set to a batch's start (lag 0: no history of statistics to keep)."""
    tfe.mean.copy_(mean)
    tfe.count.copy_(count)
    tfe.shift.zero_()


def lagged_loss(out: torch.Tensor, tn: torch.Tensor, lag: int) -> torch.Tensor:
    """MSE between output row t (frame t − lag) and the target of frame t − lag; NaN targets
    (a settled instance's warm-up frames) are left out."""
    if lag:
        out, tn = out[:, lag:], tn[:, :-lag]
    return _mse(out, tn)


POOL_PX = 8  # the block side of the pooled loss term


def pooled_loss(out: torch.Tensor, tn: torch.Tensor, lag: int) -> torch.Tensor:
    """:func:`lagged_loss` of the movies' 8 × 8-pixel block means (B, T, H, W): the scale of a
    soma, whose trace is a mean over its pixels (a NaN target frame stays NaN and is left out)."""
    def pool(a):
        b, n, h, w = a.shape
        return F.avg_pool2d(a.reshape(b * n, 1, h, w), POOL_PX).reshape(b, n, h // POOL_PX, w // POOL_PX)

    return lagged_loss(pool(out), pool(tn), lag)


def _mse(out: torch.Tensor, tn: torch.Tensor) -> torch.Tensor:
    keep = torch.isfinite(tn)
    if bool(keep.all()):
        return F.mse_loss(out, tn)
    return F.mse_loss(out[keep], tn[keep])


def identity_loss(feat: torch.Tensor, tn: torch.Tensor, lag: int) -> torch.Tensor:
    """The loss of passing the input through (no denoising): the yardstick for val loss."""
    return _mse(feat[:, :, : tn.shape[2]], tn)


def draw_batch(ds, rng: np.random.Generator, size: int, mcfg: ModelConfig, settled: float = 0.0,
               sensor_shift_nm: float = 0.0):
    """``size`` instances of dataset ``ds`` through the model's front end (:func:`normalize_batch`),
    each with its own sensor spectrum where the model takes one (shifted by up to
    ``sensor_shift_nm``, as a lab's may be off)."""
    if mcfg.sensor is None:
        return normalize_batch(*ds.batch(rng, size), mcfg, settled=settled, rng=rng)
    noisy, target, sensor = ds.batch(rng, size, sensor=True)
    if sensor_shift_nm:
        wl = ds.signal.wavelengths()
        for row, d in zip(sensor, rng.uniform(-sensor_shift_nm, sensor_shift_nm, size)):
            row[:] = np.interp(wl - d, wl, row)
    return normalize_batch(noisy, target, mcfg, settled=settled, rng=rng, sensor=sensor)


class _Batches(torch.utils.data.IterableDataset):
    """Endless normalized training batches, made in a worker process beside the optimizer."""

    def __init__(self, ds, mcfg: ModelConfig, batch: int, seed: list[int], settled: float = 0.0,
                 sensor_shift_nm: float = 0.0):
        super().__init__()
        self.ds, self.mcfg, self.batch, self.seed, self.settled = ds, mcfg, batch, seed, settled
        self.sensor_shift_nm = sensor_shift_nm

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed + [info.id if info else 0])
        while True:
            yield draw_batch(self.ds, rng, self.batch, self.mcfg, self.settled, self.sensor_shift_nm)


class _CleanBatches(torch.utils.data.IterableDataset):
    """Endless clean movies and their detector draws (PMT), made in a worker process: the
    noise and the front end are added on the training device (:func:`_finish_on`)."""

    def __init__(self, ds, batch: int, seed: list[int]):
        super().__init__()
        self.ds, self.batch, self.seed = ds, batch, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed + [info.id if info else 0])
        while True:
            clean, detector = self.ds.clean_batch(rng, self.batch)
            yield torch.from_numpy(clean), torch.from_numpy(detector)


def _finish_on(clean: torch.Tensor, detector: torch.Tensor, mcfg: ModelConfig, settled: float,
               generator: torch.Generator | None = None, graphs: FrontEndGraphs | None = None):
    """A :class:`_CleanBatches` batch made into training instances where it is (a GPU)."""
    from rtdenoise.synth.noise import PMTNoise

    noisy, static = PMTNoise.sample_torch(clean, detector, generator)
    return normalize_batch_on(noisy, clean + static, mcfg, settled=settled, generator=generator, graphs=graphs)


def _dist() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    out: str | os.PathLike,
    *,
    model: ModelConfig | None = None,
    signal=None,
    noise=None,
    config: TrainConfig | None = None,
    name: str | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
    init: Checkpoint | None = None,
) -> Checkpoint:
    """Train a causal model on synthetic instances and write the checkpoint to ``out``.

    The model's family says what it denoises: spectra (``signal`` a SpectralConfig,
    ``noise`` DetectorNoise or RecordedNoise) or movies (``signal`` an ImagingConfig,
    ``noise`` PMTNoise, SCMOSNoise or RecordedMovieNoise; patches of ``config.patch``).

    ``out`` is rewritten at every validation (atomically), so an interrupted run leaves the
    last good checkpoint; ``resume=True`` continues from it (``out + '.state'`` holds the
    optimizer). Returns the final checkpoint.

    ``init``: fine-tune this model (its config and weights) rather than start from random
    weights, e.g. to calibrate a shipped model to a rig's recorded noise in minutes; its name
    and its validation loss on this run's held-out instances before any step are recorded
    (``provenance["init"]``).
    """
    from tqdm import tqdm

    if init is not None:
        if model is not None and model != init.config:
            raise ValueError(f"the model's config comes from init ({init.name!r}); give one or the other")
        model = init.config
    model_cfg = model or ModelConfig()
    images = model_cfg.family.modality == "imaging"
    cfg = dataclasses.replace(config or TrainConfig())
    cfg.window = cfg.window or (32 if images else 256)
    if images:
        from rtdenoise.synth.dataset import ImagingDataset
        from rtdenoise.synth.imaging import ImagingConfig

        if signal is not None and not isinstance(signal, ImagingConfig):
            raise TypeError(f"an imaging model ({model_cfg.arch!r}) trains on an ImagingConfig, got {type(signal).__name__}")
        try:  # a model trained on frames it cannot take could not denoise its own training movies
            model_cfg.family.check_frame_shape(model_cfg, tuple(cfg.patch))
        except ValueError as e:
            raise ValueError(f"training patches of {cfg.patch[0]} × {cfg.patch[1]} px (--patch): {e}") from None
        ds = ImagingDataset(signal, noise, window=cfg.window, patch=cfg.patch, seed=cfg.seed)
    else:
        if signal is not None and not isinstance(signal, SpectralConfig):
            raise TypeError(f"a spectral model ({model_cfg.arch!r}) trains on a SpectralConfig, got {type(signal).__name__}")
        ds = SpectralDataset(signal, noise or DetectorNoise(), window=cfg.window, seed=cfg.seed)
        if model_cfg.n_bins != ds.signal.n_bins:
            raise ValueError(f"model has {model_cfg.n_bins} bins but the signal model {ds.signal.n_bins}")
    signal, noise = ds.signal, ds.noise
    if cfg.window <= model_cfg.lag:
        raise ValueError(f"window ({cfg.window}) must be longer than the lag ({model_cfg.lag})")
    if cfg.pooled_loss and (not images or min(cfg.patch) < POOL_PX):
        raise ValueError(f"the pooled loss is for movies of patches of at least {POOL_PX} px; "
                         f"this run trains a {model_cfg.family.modality} model on {cfg.patch}")
    if cfg.pooled_loss < 0:
        raise ValueError(f"pooled_loss is a weight >= 0, got {cfg.pooled_loss}")
    if cfg.sensor_shift_nm and model_cfg.sensor is None:
        raise ValueError("sensor_shift_nm shifts the sensor spectrum a model takes: this model takes none (--sensor)")
    if not cfg.sensor_shift_nm >= 0:
        raise ValueError(f"sensor_shift_nm is a distance in nm >= 0, got {cfg.sensor_shift_nm}")
    if not 0.0 <= cfg.settled <= 1.0:
        raise ValueError(f"settled is a share of instances in [0, 1], got {cfg.settled}")
    if cfg.settled and model_cfg.frontend(1, tuple(cfg.patch) if images else None).rank:
        raise ValueError("settled starts need a per-element front end (images); this model tracks a spectral subspace")
    if cfg.settled and cfg.window <= SETTLED_BURN + model_cfg.lag:
        raise ValueError(f"with settled starts the window must be longer than {SETTLED_BURN + model_cfg.lag} frames "
                         f"(the first {SETTLED_BURN} only warm the network), got {cfg.window}")
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) - cfg.workers))
    out = Path(out)
    state_path = out.with_name(out.name + ".state")
    rank, world = _dist()
    dev = _train_device(cfg.device, world)

    torch.manual_seed(cfg.seed)
    net = model_cfg.build()
    if init is not None:
        net.load_state_dict(init.state_dict)
    net.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, wall_before, history = 0, 0.0, []
    if resume:
        if not out.exists() or not state_path.exists():
            raise FileNotFoundError(f"cannot resume: {out} or {state_path} is missing")
        was = torch.load(out, map_location="cpu", weights_only=True).get("provenance", {}).get("init")
        if was and init is None:  # its learning rate and noise came with the init: resuming without would change them
            raise ValueError(f"{out} fine-tunes {was['name']!r}: resume it with the same init (--init {was['name']})")
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step, wall_before, history = int(st["step"]), float(st["wall_s"]), list(st["history"])
    ddp = net
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net)

    val_rng = np.random.default_rng([cfg.seed, 10**6])  # held out: never drawn in training
    val = [tuple(a.to(dev) for a in draw_batch(ds, val_rng, 8, model_cfg, cfg.settled))
           for _ in range(math.ceil(cfg.val_instances / 8))]
    # Each (rank, resume point) draws its own stream of instances. On a GPU, movies with PMT noise
    # get their noise and front end there: the CPU workers then only draw scenes (bench_train_gpu.py).
    from rtdenoise.synth.noise import PMTNoise

    on_card = dev.type == "cuda" and images and isinstance(noise, PMTNoise) and cfg.instances_on_device
    card_rng = card_graphs = None
    if on_card:  # its own stream per (rank, resume point), as the workers'
        card_graphs = FrontEndGraphs()
        card_rng = torch.Generator(device=dev)
        card_rng.manual_seed(int(np.random.SeedSequence([cfg.seed, rank, step, 1]).generate_state(1)[0]))
    batches = torch.utils.data.DataLoader(
        _CleanBatches(ds, cfg.batch, [cfg.seed, rank, step]) if on_card
        else _Batches(ds, model_cfg, cfg.batch, [cfg.seed, rank, step], cfg.settled, cfg.sensor_shift_nm),
        batch_size=None,
        num_workers=cfg.workers,
        prefetch_factor=4 if cfg.workers else None,
        pin_memory=dev.type == "cuda",
    )
    batch_iter = iter(batches)

    def validate() -> float:
        net.eval()
        with torch.no_grad():
            losses = [lagged_loss(net(x), t, model_cfg.lag).item() for x, t in val]
        net.train()
        return float(np.mean(losses))

    def save(val_loss: float, wall: float) -> Checkpoint:
        ckpt = Checkpoint(
            name=name or out.stem,
            config=model_cfg,
            state_dict={k: v.detach().cpu() for k, v in net.state_dict().items()},
            wavelengths=[] if images else list(signal.wavelengths()),
            fs=float(np.sqrt(signal.fs[0] * signal.fs[1])) if images else signal.fs,  # movies: the median of the drawn rates
            provenance={
                "signal": signal.to_dict(),
                "noise": noise.describe(),
                "train": cfg.to_dict(),
                "steps": step,
                "instances": step * cfg.batch * world,
                "final_val_loss": val_loss,
                "val_loss_raw": raw_val,
                "history": history,
                "wall_time_s": wall,
                "world_size": world,
                "instances_made": f"scenes by CPU workers, noise and front end on {dev}" if on_card else "by CPU workers",
                "command": command or " ".join(sys.argv),
                "torch": str(torch.__version__),  # TorchVersion would not load with weights_only
                **({"init": init_record} if init is not None else {}),
                "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip()
                + (f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
        )
        if rank == 0:
            ckpt.save(out)
            with atomic_path(state_path) as tmp:
                torch.save(
                    {"model": ckpt.state_dict, "optimizer": opt.state_dict(), "step": step, "wall_s": wall, "history": history},
                    tmp,
                )
        return ckpt

    # The loss of the identity (no denoising) on the same instances: the yardstick.
    raw_val = float(np.mean([identity_loss(x, t, model_cfg.lag).item() for x, t in val]))
    init_record = None
    if init is not None and resume:  # the first run's record: it saw the weights before any step
        init_record = torch.load(out, map_location="cpu", weights_only=True).get("provenance", {}).get("init")
        if init_record is None or init_record.get("name") != init.name:
            raise ValueError(f"cannot resume {out} as a fine-tuning of {init.name!r}: it was not started from it")
    elif init is not None:  # where fine-tuning starts, on this noise
        init_record = {"name": init.name, "val_loss": validate(), "steps": init.provenance.get("steps"),
                       "noise": init.provenance.get("noise", {}).get("kind")}
    t0 = time.perf_counter()
    step0 = step  # where this run started (after a resume, not 0)
    deadline = t0 + cfg.minutes * 60 if cfg.minutes else None
    total = cfg.steps
    if deadline:  # a wall-clock budget: the bar counts its seconds (the steps go in the postfix)
        bar = tqdm(total=round(cfg.minutes * 60), disable=not progress or rank != 0, unit="s", dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}{postfix}]")
    else:
        bar = tqdm(total=total, initial=step, disable=not progress or rank != 0, unit="step", dynamic_ncols=True)
    running, seen, t_rate = None, 0, time.perf_counter()
    val_loss = history[-1]["val_loss"] if history else init_record["val_loss"] if init_record else float("nan")
    ckpt = None
    net.train()
    while step < total:
        if deadline and time.perf_counter() > deadline:
            break
        for g in opt.param_groups:
            horizon = total if not deadline else step0 + _eta_steps(step - step0, t0, deadline, total - step0)
            g["lr"] = lr_at(step, horizon, cfg)
        x, t = (a.to(dev, non_blocking=True) for a in next(batch_iter))
        if on_card:
            x, t = _finish_on(x, t, model_cfg, cfg.settled, card_rng, card_graphs)
        out_ = ddp(x)
        loss = lagged_loss(out_, t, model_cfg.lag)
        if cfg.pooled_loss:
            loss = loss + cfg.pooled_loss * pooled_loss(out_, t, model_cfg.lag)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        seen += cfg.batch * world
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 10 == 0:
            rate = seen / (time.perf_counter() - t_rate)
            bar.set_postfix(**({"step": step} if deadline else {}), loss=f"{running:.4f}", raw=f"{raw_val:.3f}",
                            val=f"{val_loss:.4f}", inst_s=f"{rate:.0f}")
        bar.update(min(time.perf_counter() - t0, bar.total) - bar.n if deadline else 1)
        if step % cfg.val_every == 0:
            val_loss = validate()
            history.append({"step": step, "val_loss": val_loss, "train_loss": running, "wall_s": wall_before + time.perf_counter() - t0})
            ckpt = save(val_loss, wall_before + time.perf_counter() - t0)
    bar.close()
    val_loss = validate()
    history.append({"step": step, "val_loss": val_loss, "train_loss": running, "wall_s": wall_before + time.perf_counter() - t0})
    ckpt = save(val_loss, wall_before + time.perf_counter() - t0)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return ckpt


def _train_device(name: str, world: int) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), got {name!r}")
    if dev.type == "cuda" and world > 1:
        raise ValueError(f"training on a GPU runs as one process; this run has {world} (WORLD_SIZE): "
                         "start it without torchrun, or train on the CPU")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                           "train with device 'cpu', or install a CUDA build of torch on a machine with an NVIDIA GPU")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def calibration_noise(recorded, init: Checkpoint, prior: float = 0.25):
    """The noise to calibrate ``init`` to a rig with: ``recorded`` (the rig's dark and light
    frames), and a ``prior`` share of instances with the noise ``init`` was trained on (its
    detector model), so it keeps what it knew. ``prior`` 0: the recorded noise alone."""
    from rtdenoise.synth import DetectorConfig, DetectorNoise, MixedNoise

    if not 0.0 <= prior < 1.0:
        raise ValueError(f"prior must be in [0, 1), got {prior}")
    was = init.provenance.get("noise", {})
    if was.get("kind") == MixedNoise.kind:  # a calibrated model: the detector model it kept, if any
        was = next((s for s in was.get("sources", []) if s.get("kind") == DetectorNoise.kind), {})
    if prior == 0 or was.get("kind") != DetectorNoise.kind:  # trained on recorded noise: nothing general to keep
        return recorded
    detector = DetectorNoise(DetectorConfig.from_dict(was["config"]) if "config" in was else None)
    return MixedNoise([recorded, detector], [1.0 - prior, prior])


def _eta_steps(step: int, t0: float, deadline: float, cap: int) -> int:
    """With a time budget, the steps this run's budget will allow (``step``: done so far in it)."""
    elapsed = time.perf_counter() - t0
    if step < 20 or elapsed <= 0:
        return cap
    return min(cap, int(step * (deadline - t0) / elapsed))
