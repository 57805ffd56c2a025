"""Reads the admin endpoint's /metrics with prometheus_client's text-format parser (an
independent implementation of the Prometheus exposition format), for tests to compare values
against the traffic they sent."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from test_admin import get


class Scrape:
    """One parsed /metrics answer: sample values by (sample name, labels)."""

    def __init__(self, text: str):
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, tuple], float] = {}
        for family in text_string_to_metric_families(text):  # raises on malformed text
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(self, name: str, **labels) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def with_name(self, name: str, **labels) -> list[tuple[dict, float]]:
        """Samples of `name` whose labels include `labels`."""
        out = []
        for (n, ls), v in self.samples.items():
            d = dict(ls)
            if n == name and all(d.get(k) == want for k, want in labels.items()):
                out.append((d, v))
        return out

    def histogram(self, name: str, **labels) -> tuple[list[tuple[float, float]], float, float]:
        """(buckets as (le, cumulative count) ascending, sum, count), checked for consistency."""
        buckets = sorted((float(d["le"]), v) for d, v in self.with_name(name + "_bucket", **labels))
        count = self.value(name + "_count", **labels)
        total = self.value(name + "_sum", **labels)
        assert buckets and buckets[-1][0] == float("inf"), f"{name}: no +Inf bucket"
        assert buckets[-1][1] == count, f"{name}: +Inf bucket != count"
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{name}: buckets not cumulative"
        return buckets, total, count


def scrape(port: int) -> Scrape:
    code, text = get(port, "/metrics")
    assert code == 200
    return Scrape(text)
