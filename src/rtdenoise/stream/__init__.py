"""Streaming: wire protocol, publisher/subscriber clients, the live service, file replay.

The live service (:mod:`~rtdenoise.stream.service`) wires stages that each stand alone:
:mod:`~rtdenoise.stream.admission` (per-stream rules, pure), :mod:`~rtdenoise.stream.sequencer`
(seq, gaps, restarts, the lag flush; no sockets), :mod:`~rtdenoise.stream.sockets` (bind/connect,
monitors, CURVE; shared with the clients), :mod:`~rtdenoise.stream.control` (requests, the
``control()`` client, the status table) and :mod:`~rtdenoise.stream.stats` (counters).

``import rtdenoise.stream`` does not import torch: the service loads its engine (and
torch with it) when a :class:`Service` is made.
"""

from rtdenoise.stream.client import Publisher, Subscriber
from rtdenoise.stream.replay import replay
from rtdenoise.stream.service import Service, ServiceConfig, control, serve
from rtdenoise.stream.wire import WireError, decode, encode, encode_denoised, encode_frames

__all__ = [
    "Publisher",
    "Subscriber",
    "Service",
    "ServiceConfig",
    "serve",
    "control",
    "replay",
    "encode",
    "encode_frames",
    "encode_denoised",
    "decode",
    "WireError",
]
