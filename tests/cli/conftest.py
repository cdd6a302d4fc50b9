"""The fake chat endpoint for ``tgcnet prompts``."""
from chat_server import api_key, fake_chat  # noqa: F401
