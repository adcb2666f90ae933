"""Scraping ``GET /metrics`` in tests: parsed by prometheus-client's own text parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, frozenset[tuple[str, str]]]
PLAIN = "text/plain; version="  # Prometheus's text format (0.0.4, or 1.0.0 from prometheus-client 0.22 on)


class Scrape:
    """One scrape of /metrics, parsed by prometheus-client: each sample's value by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[Sample, float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def count(self, histogram: str) -> float:
        return self.get(f"{histogram}_count")

    def parley(self) -> dict[Sample, float]:
        return {key: value for key, value in self.samples.items() if key[0].startswith("parley_")}

    def __sub__(self, before: Scrape) -> dict[Sample, float]:
        """What changed since ``before``, sample by sample (only Parley's, only those that moved)."""
        keys = set(self.parley()) | set(before.parley())
        moved = {k: self.samples.get(k, 0.0) - before.samples.get(k, 0.0) for k in keys}
        return {k: v for k, v in moved.items() if v}


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=10) as http:  # a new connection each time: any worker may answer
        response = await http.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(PLAIN), response.headers["content-type"]
    return Scrape(response.text)


def changed(after: Scrape, before: Scrape, *names: str) -> dict[Sample, float]:
    """The moves of the samples named (a histogram by its ``_count``), with their labels."""
    wanted = {n if not n.endswith("_seconds") else f"{n}_count" for n in names}
    return {k: v for k, v in (after - before).items() if k[0] in wanted}


def key(name: str, **labels: str) -> Sample:
    return (name, frozenset(labels.items()))
