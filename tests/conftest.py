"""Shared fixtures."""

import pytest
import torch


@pytest.fixture()
def one_torch_thread():
    """Tiny matrices: a thread pool only adds hand-off latency (milliseconds per op when the
    other core is busy), and one thread keeps timings predictable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
