import pytest


def pytest_configure(config):
    """Float results must not depend on the machine's core count: one torch thread (a fixed reduction order)
    and torch's deterministic kernels, for every test. Float paths are still compared with bounds, since
    x86 CPUs differ in their vector kernels."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(scope="session")
def bundled():
    """The bundled model and tokenizer, loaded once per test session."""
    from accllm.quant.model import load_model

    return load_model(None)
