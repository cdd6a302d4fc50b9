"""One intra-op thread for the command tests, and the fake chat endpoint for ``tgcnet prompts``."""
from __future__ import annotations

import pytest
import torch

from chat_server import api_key, fake_chat  # noqa: F401


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: avoids OpenMP oversubscription on the shared 2-core CI."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
