"""Operations: Prometheus metrics and OpenTelemetry traces, both off until configured."""
