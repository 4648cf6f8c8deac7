"""``JupyterDsApp.routes``: a mistake stops the start with the setting named, and a good
setting builds one pool per route with every endpoint's engine from its options + URL."""

from __future__ import annotations

import re

import pytest
from ds_engine import EngineConfig
from test_routing import Replica
from traitlets import TraitError

from jupyter_ds.app import JupyterDsApp
from jupyter_ds.routing import EnginePool, build_pool, parse_routes, route_of_task

SPEC = "test_routing.Replica"


def route(**kw):
    return {"engine_class": SPEC, "endpoints": ["http://a:8000/v1"], **kw}


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"autocomplete": route()}, r"routes\['autocomplete'\]: unknown task"),
        ({"completion": "http://a/v1"}, r"routes\['completion'\] must be a dict"),
        ({"completion": route(endpoints=[])}, r"routes\['completion'\]\.endpoints must be a "
                                              r"non-empty list"),
        ({"chat": route(endpoints=None)}, r"routes\['chat'\]\.endpoints must be"),
        ({"explain": route(endpoints=["http://a/v1", "fim-1:8000"])},
         r"routes\['explain'\]\.endpoints\[1\]: 'fim-1:8000' is not an http\(s\) URL"),
        ({"tests": route(endpoints=["ftp://a/v1"])}, r"endpoints\[0\]: 'ftp://a/v1' is not"),
        ({"tests": route(endpoints=["http://a:99999/v1"])}, r"invalid port"),
        ({"tests": route(endpoints=["http://user:secret@a/v1"])}, r"carries credentials"),
        ({"tests": route(endpoints=["http://a/v1", "http://a/v1"])}, r"an endpoint twice"),
        ({"completion": route(engine_class="no_such.Engine")},
         r"routes\['completion'\]\.engine_class 'no_such.Engine' cannot be imported"),
        ({"completion": route(engine_class="collections.OrderedDict")},
         r"routes\['completion'\]\.engine_class .* missing"),
        ({"completion": route(replicas=2)}, r"unknown key\(s\) 'replicas'"),
        ({"completion": route(options=["model"])}, r"\.options must be a dict"),
        ({"completion": route(options={"url": "http://b/v1"})}, r"'url' comes from each"),
        ({"completion": route(failure_threshold=0)}, r"\.failure_threshold must be an "
                                                     r"integer of at least 1"),
        ({"completion": route(cooldown_s="10")}, r"\.cooldown_s must be a number"),
        ({"completion": route(cooldown_s=30, max_cooldown_s=10)}, r"at least cooldown_s"),
    ],
)
def test_a_bad_route_is_refused_with_the_setting_named(routes, message):
    app = JupyterDsApp()
    with pytest.raises(TraitError) as caught:
        app.routes = routes
    assert str(caught.value).startswith("JupyterDsApp.routes[")
    assert re.search(message, str(caught.value)), caught.value
    assert app.routes == {}


def test_a_good_setting_is_kept_and_chat_stands_for_three_tasks():
    app = JupyterDsApp()
    app.routes = {"completion": route(endpoints=["http://fim-0/v1", "https://fim-1:8443/v1"]),
                  "chat": route(), "tests": route(endpoints="http://big/v1")}
    routes = parse_routes(app.routes)
    assert routes["completion"].endpoints == ("http://fim-0/v1", "https://fim-1:8443/v1")
    assert routes["tests"].endpoints == ("http://big/v1",)  # one URL may be a string
    assert route_of_task(routes) == {"completion": "completion", "explain": "chat",
                                     "tests": "tests", "commit_message": "chat"}
    assert route_of_task(parse_routes({"explain": route()})) == {"explain": "explain"}
    assert parse_routes({}) == {} and route_of_task({}) == {}


def test_the_default_engine_class_of_a_route_is_the_remote_engine():
    routes = parse_routes  # the class is imported when the setting is read
    try:
        parsed = routes({"completion": {"endpoints": ["http://a/v1"]}})
    except ValueError as exc:  # ds_engine.remote not there (yet): named as the route's
        assert "routes['completion'].engine_class 'ds_engine.remote.RemoteEngine'" in str(exc)
    else:
        assert parsed["completion"].engine_class == "ds_engine.remote.RemoteEngine"


def test_a_pool_is_built_with_each_endpoint_url_in_the_options():
    config = parse_routes({"completion": route(
        endpoints=["http://fim-0/v1", "http://fim-1/v1"],
        options={"answer": "pass", "name": "fim"}, affinity_slack=2, failure_threshold=5,
        cooldown_s=1, health_interval_s=0)})["completion"]
    seen: list[EngineConfig] = []

    def make(spec, engine_config):
        seen.append(engine_config)
        return Replica.from_config(engine_config)

    pool = build_pool(config, make)
    assert isinstance(pool, EnginePool) and pool.name == "completion"
    assert [c.options for c in seen] == [
        {"answer": "pass", "name": "fim", "url": "http://fim-0/v1"},
        {"answer": "pass", "name": "fim", "url": "http://fim-1/v1"}]
    assert [r.url for r in pool.replicas] == ["http://fim-0/v1", "http://fim-1/v1"]
    assert (pool.affinity_slack, pool.failure_threshold, pool.cooldown_s) == (2, 5, 1.0)
    assert build_pool(config).replicas[1].engine.url == "http://fim-1/v1"  # the factory


def test_an_engine_that_refuses_its_options_names_the_route_and_endpoint():
    config = parse_routes({"chat": route(options={"colour": "red"})})["chat"]
    with pytest.raises(ValueError, match=r"routes\['chat'\]: the engine for http://a:8000/v1 "
                                         r"could not be built: TypeError"):
        build_pool(config)


def test_without_routes_every_task_shares_the_one_engine():
    app = JupyterDsApp()
    app.engine_class = SPEC
    app.engine_options = {"url": "http://local/v1"}
    engines = app.make_task_engines()
    assert len({id(e) for e in engines.values()}) == 1
    app.routes = {"chat": route()}
    engines = app.make_task_engines()
    assert engines["explain"] is engines["tests"] is engines["commit_message"]
    assert engines["completion"] is not engines["explain"]
    assert isinstance(engines["explain"].wrapped, EnginePool)
    assert not isinstance(engines["completion"].wrapped, EnginePool)
    app.routes = {"completion": route(options={"colour": "red"})}
    with pytest.raises(TraitError, match=r"JupyterDsApp.routes\['completion'\]"):
        app.make_task_engines()
