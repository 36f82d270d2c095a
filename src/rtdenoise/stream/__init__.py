"""Streaming: wire protocol, publisher/subscriber clients, the live service, file replay.

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
