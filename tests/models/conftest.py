from tests.torch_fixtures import one_thread  # noqa: F401 - autouse for every test here
