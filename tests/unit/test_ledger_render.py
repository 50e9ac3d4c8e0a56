"""`tollway usage` output: an aligned table, CSV and JSON Lines, with exact money."""

from __future__ import annotations

import csv
import io

import orjson
import pytest
from tollway.service.cli.render import (
    format_usd,
    render,
    render_csv,
    render_jsonl,
    render_table,
)
from tollway.v1 import completion_pb2 as pb

GROUP_BY = ["caller", "day", "label:team"]
ROWS = [
    pb.UsageSummaryRow(
        group=pb.UsageGroup(caller="team-a", day="2026-05-09", labels={"team": "search"}),
        requests=1200, input=pb.InputUsage(total=2_383_200, text=6000, audio=210_000, unattributed=2_167_200),
        output=pb.OutputUsage(total=144_000, text=120_000, reasoning=24_000), total_tokens=2_527_200,
        cost_nano_usd=421_920_000, unpriced_requests=3, estimated_requests=1,
        provider_reported_cost_nano_usd=422_400_001),
    pb.UsageSummaryRow(
        group=pb.UsageGroup(caller="team-b", day="2026-05-10"),
        requests=7, input=pb.InputUsage(total=70, text=70), output=pb.OutputUsage(total=7, text=7),
        total_tokens=77, cost_nano_usd=1_500),
]


@pytest.mark.parametrize(("nano", "usd"), [
    (0, "0.00"), (1, "0.000000001"), (1_500, "0.0000015"), (10_000_000, "0.01"), (421_920_000, "0.42192"),
    (12_345_000_000_000, "12345.00"), (-2_500_000_000, "-2.50"),
])
def test_dollars_are_exact_from_nano_usd(nano, usd):
    assert format_usd(nano) == usd


def test_the_table_aligns_groups_left_and_numbers_right():
    assert render_table(ROWS, GROUP_BY) == (
        "caller  day         label:team  requests    input  output  total tokens   cost USD  unpriced  estimated"
        "  provider cost USD\n"
        "------  ----------  ----------  --------  -------  ------  ------------  ---------  --------  ---------"
        "  -----------------\n"
        "team-a  2026-05-09  search          1200  2383200  144000       2527200    0.42192         3          1"
        "        0.422400001\n"
        "team-b  2026-05-10  -                  7       70       7            77  0.0000015         0          0"
        "               0.00\n"
    )


def test_csv_carries_every_bucket_and_exact_money():
    rows = list(csv.DictReader(io.StringIO(render_csv(ROWS, GROUP_BY))))
    assert list(rows[0]) == [
        "caller", "day", "label:team", "requests",
        "input_total", "input_text", "input_image", "input_audio", "input_video", "input_document",
        "input_cache_read", "input_cache_write_5m", "input_cache_write_1h", "input_cache_write_unknown_ttl",
        "input_unattributed", "output_total", "output_text", "output_audio", "output_image", "output_reasoning",
        "output_unattributed", "total_tokens", "cost_nano_usd", "cost_usd", "unpriced_requests",
        "estimated_requests", "provider_reported_cost_nano_usd", "provider_reported_cost_usd"]
    assert rows[0]["input_audio"] == "210000"
    assert rows[0]["cost_nano_usd"] == "421920000"
    assert rows[0]["provider_reported_cost_usd"] == "0.422400001"
    assert rows[1]["label:team"] == ""
    assert rows[1]["output_reasoning"] == "0"


def test_jsonl_is_one_object_per_row_with_integers_and_null_for_a_missing_label():
    lines = render_jsonl(ROWS, GROUP_BY).splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["caller"] == "team-a"
    assert first["label:team"] == "search"
    assert first["input_unattributed"] == 2_167_200
    assert first["cost_nano_usd"] == 421_920_000 and first["cost_usd"] == "0.42192"
    assert second["label:team"] is None
    assert second["unpriced_requests"] == 0


def test_without_grouping_the_one_row_has_only_the_sums():
    total = pb.UsageSummaryRow(requests=3, total_tokens=30, cost_nano_usd=5)
    assert render_table([total], []).splitlines()[2].split() == ["3", "0", "0", "30", "0.000000005", "0", "0", "0.00"]
    assert next(csv.reader(io.StringIO(render_csv([total], []))))[0] == "requests"


def test_render_picks_the_format_by_name():
    assert render(ROWS, GROUP_BY, "csv") == render_csv(ROWS, GROUP_BY)
    assert render(ROWS, GROUP_BY, "jsonl") == render_jsonl(ROWS, GROUP_BY)
    assert render(ROWS, GROUP_BY) == render_table(ROWS, GROUP_BY)
    with pytest.raises(ValueError, match="unknown format 'xml': use one of table, csv, jsonl"):
        render(ROWS, GROUP_BY, "xml")
    with pytest.raises(ValueError, match="unknown grouping 'colour'"):
        render(ROWS, ["colour"], "table")
