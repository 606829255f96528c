import pytest


@pytest.fixture(scope="session")
def bundled():
    """The bundled model and tokenizer, loaded once per test session."""
    from accllm.quant.model import load_model

    return load_model(None)
