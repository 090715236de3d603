"""OmniJobs: durable jobs for any-to-any multimodal models, split into batched stages."""

__version__ = "0.1.0"
