"""The private Ax use in ``odnas.loop.adapter`` still matches the installed Ax.

Each check names what an Ax upgrade would break; when one fails, mend the adapter
(and only the adapter) and update ``AX_VERSIONS``.
"""

from importlib.metadata import version

from packaging.specifiers import SpecifierSet

from odnas.loop import adapter


def test_installed_ax_is_one_the_adapter_was_written_for():
    assert version("ax-platform") in SpecifierSet(adapter.AX_VERSIONS)


def test_client_experiment_and_generation_strategy():
    adapter.import_ax()
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig

    client = Client()
    client.configure_experiment(parameters=[RangeParameterConfig(name="x", bounds=(0.0, 1.0), parameter_type="float")])
    client.configure_optimization("y")
    exp = adapter.experiment_of(client)
    assert type(exp).__name__ == "Experiment" and "x" in exp.search_space.parameters
    client.get_next_trials(max_trials=1)  # chooses a generation strategy
    gs = adapter.generation_strategy_of(client)
    assert type(gs).__name__ == "GenerationStrategy" and gs.nodes_by_name


def test_trial_properties_are_stored_with_the_trial(tmp_path):
    adapter.import_ax()
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig

    client = Client()
    client.configure_experiment(parameters=[RangeParameterConfig(name="x", bounds=(0.0, 1.0), parameter_type="float")])
    client.configure_optimization("y")
    idx = client.attach_trial({"x": 0.5})
    trial = adapter.experiment_of(client).trials[idx]
    assert adapter.trial_property(trial, "retry_of") is None
    adapter.set_trial_property(trial, "retry_of", 3)
    assert adapter.trial_property(trial, "retry_of") == 3
    # The property survives Ax's JSON round trip (what SQL storage also keeps).
    path = tmp_path / "snap.json"
    client.save_to_json_file(str(path))
    again = Client.load_from_json_file(str(path))
    assert adapter.trial_property(adapter.experiment_of(again).trials[idx], "retry_of") == 3


def test_generation_is_routed_through_odnas_and_back():
    """``wrap_generation`` shadows ``gen`` on one strategy instance: the Client's own
    requests for candidates then pass through odnas (here a counter), and unwrapping
    leaves the class's method."""
    adapter.import_ax()
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig

    client = Client()
    client.configure_experiment(parameters=[RangeParameterConfig(name="x", bounds=(0.0, 1.0), parameter_type="float")])
    client.configure_optimization("y")
    client.get_next_trials(max_trials=1)
    gs = adapter.generation_strategy_of(client)
    calls = []

    def gen(*args, **kwargs):
        calls.append(kwargs.get("num_trials"))
        return real(*args, **kwargs)

    real = adapter.wrap_generation(gs, gen)
    client.get_next_trials(max_trials=1)
    assert calls == [1]
    adapter.unwrap_generation(gs)
    assert "gen" not in vars(gs)
    client.get_next_trials(max_trials=1)
    assert calls == [1]
