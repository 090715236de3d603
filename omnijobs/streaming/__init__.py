"""The per-job event channel: token deltas and state nudges from workers, read live by the API.

Engines publish through `DeltaSink` (worker side, sync); the API follows a job with `JobFollower`
(async), which merges the channel with the job store. The store stays the record of truth: the
channel only carries what happens between the store's writes (token deltas) and nudges that a
state changed, so a lost or missing channel (no Redis in dev mode) costs liveness, never results.
"""

from omnijobs.streaming.channel import ChannelConfig, channel_key
from omnijobs.streaming.deltas import TextDeltas
from omnijobs.streaming.follow import FollowEvent, JobFollower
from omnijobs.streaming.sink import DeltaSink, delta_sink

__all__ = ["ChannelConfig", "DeltaSink", "FollowEvent", "JobFollower", "TextDeltas", "channel_key", "delta_sink"]
