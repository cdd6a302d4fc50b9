"""The fake chat endpoint and API key of ``chat_server`` for the knowledge-tool tests."""
from chat_server import api_key, fake_chat  # noqa: F401
