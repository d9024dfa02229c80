import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Small models: one thread is fastest and immune to oversubscription on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
