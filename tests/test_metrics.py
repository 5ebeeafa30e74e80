"""Metrics: names, units, labels, an isolated registry per instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ganserve.server.metrics import Metrics

EXPECTED = {
    "ganserve_requests": "counter",
    "ganserve_request_seconds": "histogram",
    "ganserve_inflight_requests": "gauge",
    "ganserve_queue_wait_seconds": "histogram",
    "ganserve_inference_seconds": "histogram",
    "ganserve_batch_size_images": "histogram",
    "ganserve_images": "counter",
    "ganserve_queue_depth": "gauge",
    "ganserve_queue_capacity": "gauge",
    "ganserve_model_state": "gauge",
    "ganserve_model_rewritten_layers": "gauge",
    "ganserve_model_load_failures": "counter",
    "ganserve_reloads": "counter",
    "ganserve_build_info": "gauge",
}


def _families(metrics: Metrics) -> dict[str, object]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_names_types_and_process_metrics() -> None:
    m = Metrics()
    m.requests_total.labels("tiny", "Sample", "OK").inc()
    m.batch_size.labels("tiny").observe(3)
    families = _families(m)
    for name, kind in EXPECTED.items():
        assert families[name].type == kind, name  # type: ignore[attr-defined]
    assert "process_cpu_seconds" in families
    assert "python_info" in families


def test_build_info_names_this_version() -> None:
    import onnxruntime

    from ganserve import __version__

    (sample,) = _families(Metrics())["ganserve_build_info"].samples  # type: ignore[attr-defined]
    assert sample.name == "ganserve_build_info" and sample.value == 1.0
    assert sample.labels["version"] == __version__
    assert sample.labels["onnxruntime"] == onnxruntime.__version__


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_reload_results_exist_before_any_reload() -> None:
    m = Metrics()
    assert _sample(m, "ganserve_reloads_total", result="ok") == 0
    assert _sample(m, "ganserve_reloads_total", result="failed") == 0


def test_queue_depth_is_read_from_the_queues_at_scrape_time() -> None:
    m = Metrics()
    v1, v2 = [1, 2, 3], [4]  # two versions' queues of one model
    m.track_queue("tiny", 1, v1.__len__)
    m.track_queue("tiny", 2, v2.__len__)
    assert _sample(m, "ganserve_queue_depth", model="tiny") == 4
    v1.clear()
    assert _sample(m, "ganserve_queue_depth", model="tiny") == 1  # no update call needed
    m.track_queue("tiny", 2, None)
    assert _sample(m, "ganserve_queue_depth", model="tiny") == 0
    m.track_queue("tiny", 1, None)
    assert _sample(m, "ganserve_queue_depth", model="tiny") == 0  # stopped: not stuck


def test_batch_size_buckets_are_powers_of_two_up_to_max() -> None:
    m = Metrics(max_batch_size=48)
    m.batch_size.labels("tiny").observe(5)
    text = generate_latest(m.registry).decode()
    for le in ("1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "48.0", "+Inf"):
        assert f'ganserve_batch_size_images_bucket{{le="{le}",model="tiny"}}' in text
    assert 'le="64.0"' not in text


def test_registries_are_isolated() -> None:
    registry = CollectorRegistry()
    a, b = Metrics(registry), Metrics()
    a.images_total.labels("tiny").inc(5)
    assert a.registry is registry
    assert registry.get_sample_value("ganserve_images_total", {"model": "tiny"}) == 5
    assert b.registry.get_sample_value("ganserve_images_total", {"model": "tiny"}) is None


def test_model_state_one_hot_and_removal() -> None:
    m = Metrics()
    m.set_model_state("tiny", "1", "LOADING")
    m.set_model_state("tiny", "1", "READY")
    value = m.registry.get_sample_value
    labels = {"model": "tiny", "version": "1"}
    assert value("ganserve_model_state", {**labels, "state": "READY"}) == 1
    assert value("ganserve_model_state", {**labels, "state": "LOADING"}) == 0
    m.set_model_state("tiny", "1", None)
    assert value("ganserve_model_state", {**labels, "state": "READY"}) is None


def test_count_finished_counts_and_observes_each_call() -> None:
    m = Metrics()
    for seconds in (0.001, 0.002):
        m.count_finished("tiny", "Sample", "OK", seconds)
    m.count_finished("tiny", "Sample", "NOT_FOUND", 0.0005)
    ok = {"model": "tiny", "method": "Sample", "code": "OK"}
    assert _sample(m, "ganserve_requests_total", **ok) == 2
    assert _sample(m, "ganserve_requests_total", **{**ok, "code": "NOT_FOUND"}) == 1
    count = _sample(m, "ganserve_request_seconds_count", model="tiny", method="Sample")
    assert count == 3
    total = _sample(m, "ganserve_request_seconds_sum", model="tiny", method="Sample")
    assert total is not None and abs(total - 0.0035) < 1e-9
