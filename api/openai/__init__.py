"""OpenAI-compatible routes: each request is an ordinary durable job (same store, queues, keys, limits).

One module per route family; each maps its request onto `omnijobs.submit` and the job's view.
"""

from fastapi import APIRouter

from api.openai import audio, chat, completions, images, models, videos

router = APIRouter()
for _module in (models, chat, completions, images, audio, videos):
    router.include_router(_module.router)
