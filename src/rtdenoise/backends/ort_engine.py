"""ONNX Runtime engine: the exported streaming step on the CPU (or any ORT provider).

The graph is the one :func:`rtdenoise.backends.export.export_onnx` writes: inputs ``feat``
and each state by its dotted name, outputs ``out`` and ``<state>.out``. States live on the
host as numpy arrays, allocated once per :class:`StreamState` and overwritten in place
after every step (``np.copyto``), so their addresses never move.
"""

from __future__ import annotations

import os

import numpy as np

from rtdenoise.backends.base import Engine, PerChunk
from rtdenoise.model.checkpoint import Checkpoint


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:  # a core dependency, but a broken install should say what to do
        raise ImportError(f"the onnxruntime backend needs ONNX Runtime: pip install onnxruntime ({e})") from e
    return onnxruntime


class OrtEngine(Engine):
    """Steps the exported network with ONNX Runtime.

    Parameters
    ----------
    checkpoint : Checkpoint
        The model. Its weights are exported in memory unless ``onnx_path`` is given.
    onnx_path : str or path-like, optional
        An ``.onnx`` written by ``rtdenoise export`` for this model; its metadata must match
        the checkpoint's config.
    threads : int
        ONNX Runtime intra-op threads (1: lowest latency for one frame, no thread hand-offs).
    providers : list, optional
        ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).
    io_binding : bool
        Bind inputs and outputs once per chunk length to fixed host arrays (faster for 1 frame).
    spin : bool
        Let the intra-op threads (``threads`` > 1) spin-wait after each step, ONNX Runtime's
        default. Off here: stepping 512 × 512 at 30 Hz on 2 cores, spinning took 56 ms of CPU
        per 33 ms frame period (34 ms off) for 1.4 ms less step latency; at 128 × 128, 100 Hz,
        12 ms per 10 ms period (3 off) for 0.7 ms. That CPU is what acquisition software, the
        sockets and the front end on the same cores need (``benchmarks/results/ort_spin.md``).

    Examples
    --------
    >>> from rtdenoise.backends import load_engine
    >>> engine = load_engine("spectral-lag0", backend="onnxruntime")  # doctest: +SKIP
    """

    backend = "onnxruntime"

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        onnx_path: str | os.PathLike | None = None,
        threads: int = 1,
        providers: list | None = None,
        io_binding: bool = True,
        spin: bool = False,
    ):
        from rtdenoise.backends.export import export_onnx, read_onnx_metadata

        super().__init__(checkpoint)
        ort = _import_ort()
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if onnx_path is None:
            source = export_onnx(checkpoint)  # bytes, in memory
        else:
            if not os.path.exists(onnx_path):
                raise FileNotFoundError(f"ONNX file {str(onnx_path)!r} does not exist; write it with `rtdenoise export`")
            source = str(onnx_path)
        meta = read_onnx_metadata(source)
        self._check_exported(meta, onnx_path)
        self.onnx_path = None if onnx_path is None else str(onnx_path)
        self.io = meta["io"]
        self.states = list(self.io["states"])  # in the graph, in this order
        self.omitted_states = list(self.io["omitted_states"])
        self.n_outputs = None if self.io["n_outputs"] is None else int(self.io["n_outputs"])  # None: images
        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3  # errors only: unused-initializer notes are not news
        self.threads = int(threads)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.gpu = self.providers[0] != "CPUExecutionProvider"
        self.session = ort.InferenceSession(source, sess_options=opts, providers=self.providers)
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        if got_in != self.io["inputs"] or got_out != self.io["outputs"]:
            raise ValueError(
                f"{onnx_path or 'the exported graph'} has inputs {got_in} and outputs {got_out}; "
                f"its metadata says {self.io['inputs']} and {self.io['outputs']}"
            )
        names = self.layout.state_names()  # built here, not on the first frame
        if sorted(self.states + self.omitted_states) != sorted(names):
            raise ValueError(f"{onnx_path or 'the exported graph'} has states {self.states + self.omitted_states}; "
                             f"model {checkpoint.name!r} has {names}; re-export it with `rtdenoise export`")
        # Bound host arrays only make sense where the graph runs on the host.
        self.io_binding = bool(io_binding) and self.providers[0] == "CPUExecutionProvider"

    # -- backend hooks -----------------------------------------------------------------
    def _new_net_state(self, batch: int, frame: tuple[int, ...]) -> "_OrtState":
        shapes = self.state_shapes(batch, frame)
        return _OrtState({n: np.zeros(shapes[n], dtype=np.float32) for n in self.states + self.omitted_states})

    def _net_step(self, feat: np.ndarray, net_state: dict[str, np.ndarray]) -> np.ndarray:
        bsz, n = feat.shape[:2]
        if self.io_binding and isinstance(net_state, _OrtState):
            bound = net_state.bindings.get_or_make(n, lambda: self._bind(net_state, feat.shape))
            np.copyto(bound.feat, feat)
            self.session.run_with_iobinding(bound.binding)
            out, new = bound.out.copy(), bound.new
        else:
            feed = {"feat": np.ascontiguousarray(feat, dtype=np.float32), **{k: net_state[k] for k in self.states}}
            res = self.session.run(self.io["outputs"], feed)
            out, new = res[0], res[1:]
        for k, v in zip(self.states, new):
            np.copyto(net_state[k], v)  # in place: the state's address never moves
        assert out.shape[:2] == (bsz, n), out.shape
        return out

    def _bind(self, net_state: "_OrtState", feat_shape: tuple[int, ...]) -> "_Bound":
        # One IOBinding per chunk length, bound once to fixed host arrays: the feature
        # buffer, the state arrays themselves, and scratch outputs (a state can't be its own
        # output: ORT may read an input after writing an output). Saves ~25% of a 1-frame
        # step against session.run, which allocates and converts every call.
        feat = np.zeros(feat_shape, dtype=np.float32)
        out_tail = feat_shape[2:] if self.n_outputs is None else (self.n_outputs,)  # an image model gives its grid back
        out = np.zeros((*feat_shape[:2], *out_tail), dtype=np.float32)
        new = [np.zeros_like(net_state[k]) for k in self.states]
        b = self.session.io_binding()
        b.bind_cpu_input("feat", feat)
        for k in self.states:
            b.bind_cpu_input(k, net_state[k])
        for name, arr in zip(self.io["outputs"], [out, *new]):
            b.bind_output(name, "cpu", 0, np.float32, list(arr.shape), arr.ctypes.data)
        return _Bound(b, feat, out, new)


class _OrtState(dict):
    """Named state arrays of a set of streams, plus the IOBindings that point at them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bindings = PerChunk()  # chunk length -> _Bound


class _Bound:
    __slots__ = ("binding", "feat", "out", "new")

    def __init__(self, binding, feat, out, new):
        self.binding, self.feat, self.out, self.new = binding, feat, out, new
