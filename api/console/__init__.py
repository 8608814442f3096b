"""The supervisor console (供暖管家 · 督办台): static pages at `/console` and the few JSON aggregates they
need under `/api/v1/console`; everything else the pages read from the existing API."""
