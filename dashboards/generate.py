#!/usr/bin/env python3
"""Generates dashboards/callbridge.json, the Grafana dashboard of callbridge.

Standard library only, so CI needs no pip. The committed JSON must equal this script's output:

    python3 dashboards/generate.py           # (re)write dashboards/callbridge.json
    python3 dashboards/generate.py --check   # exit 1 if the committed file differs

Every panel query uses metric names that callbridge exports (src/metrics.rs);
tests/prometheus.rs asks a real Prometheus, scraping a real callbridge, that each query evaluates
and that each metric it names is exported and has data.

Variables: `datasource` (any Prometheus data source) and `instance` (one or more callbridge
instances, from the `instance` label Prometheus adds when scraping).
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "callbridge.json"

# Every query is filtered by the instance variable.
SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}


def quantiles(metric, by="", extra="", qs=(0.5, 0.99)):
    """p50/p99 (by default) of a bucketed histogram, optionally split by labels in `by`."""
    labels = "le" + (", " + by if by else "")
    sel = SEL + ("," + extra if extra else "")
    targets = []
    for q in qs:
        legend = f"p{int(q * 100)}" + (" {{" + by + "}}" if by else "")
        targets.append(
            (
                f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
                legend,
            )
        )
    return targets


# (row title, [ (panel title, description, unit, kind, [(expr, legend), ...]) ])
ROWS = [
    (
        "Traffic",
        [
            (
                "Active calls",
                "Calls bridged right now (Twilio stream and OpenAI session both owned by a worker).",
                "short",
                "stat",
                [(f"sum(callbridge_active_calls{{{SEL}}})", "active calls")],
            ),
            (
                "Calls ended, by outcome",
                "Calls per second by outcome: twilio_stop is a normal hang-up; openai_* means the AI leg failed; "
                "fallback_* means the webhook sent the caller to the legacy conference.",
                "reqps",
                "timeseries",
                [(f"sum by (outcome) (rate(callbridge_calls_total{{{SEL}}}[{RATE}]))", "{{outcome}}")],
            ),
            (
                "Audio frames forwarded",
                "Audio frames per second: up = caller to OpenAI, down = OpenAI to caller. "
                "A live call sends 50 frames/s up.",
                "short",
                "timeseries",
                [(f"sum by (direction) (rate(callbridge_frames_total{{{SEL}}}[{RATE}]))", "{{direction}}")],
            ),
            (
                "Socket throughput",
                "Bytes per second on the sockets, by leg and direction (WebSocket framing and TLS included).",
                "Bps",
                "timeseries",
                [
                    (
                        f"sum by (leg, direction) (rate(callbridge_bytes_total{{{SEL}}}[{RATE}]))",
                        "{{leg}} {{direction}}",
                    )
                ],
            ),
            (
                "HTTP requests",
                "Requests per second by route and status (101 = media stream upgrade).",
                "reqps",
                "timeseries",
                [
                    (
                        f"sum by (route, status) (rate(callbridge_http_requests_total{{{SEL}}}[{RATE}]))",
                        "{{route}} {{status}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Latency",
        [
            (
                "Uplink latency (caller to OpenAI)",
                "Time from reading a Twilio media frame to writing its append to the OpenAI socket, p50 and p99.",
                "s",
                "timeseries",
                quantiles("callbridge_uplink_latency_seconds"),
            ),
            (
                "Downlink latency (OpenAI to caller)",
                "Time from reading an OpenAI audio delta to writing its Twilio media frame, p50 and p99.",
                "s",
                "timeseries",
                quantiles("callbridge_downlink_latency_seconds"),
            ),
            (
                "Call setup, p99 by phase",
                "webhook_to_start: webhook answered to Twilio start (same instance only); start_to_session: "
                "Twilio start to session.updated; openai_connect: TCP + TLS + WebSocket handshake.",
                "s",
                "timeseries",
                quantiles("callbridge_call_setup_seconds", by="phase", qs=(0.99,)),
            ),
            (
                "Call setup, p50 by phase",
                "Median of each setup phase.",
                "s",
                "timeseries",
                quantiles("callbridge_call_setup_seconds", by="phase", qs=(0.5,)),
            ),
        ],
    ),
    (
        "Barge-in and truncation",
        [
            (
                "Barge-in latency",
                "Time from reading speech_started to writing Twilio's clear, p50 and p99: how fast the caller "
                "stops hearing the assistant after interrupting it.",
                "s",
                "timeseries",
                quantiles("callbridge_barge_in_latency_seconds"),
            ),
            (
                "Barge-ins",
                "Barge-ins per minute (each sent clear and conversation.item.truncate).",
                "short",
                "timeseries",
                [(f"60 * sum(rate(callbridge_truncation_audio_end_seconds_count{{{SEL}}}[{RATE}]))", "per minute")],
            ),
            (
                "Audio heard at truncation",
                "audio_end_ms sent in the truncate (what the caller heard of the interrupted item), p50 and p99.",
                "s",
                "timeseries",
                quantiles("callbridge_truncation_audio_end_seconds"),
            ),
            (
                "Clamped at truncation (mean)",
                "Mean heard-audio estimate beyond the audio sent, clamped away per barge-in. Non-zero means "
                "mark echoes lag the audio sent (a slow Twilio edge or clock skew).",
                "s",
                "timeseries",
                [
                    (
                        f"sum(rate(callbridge_truncation_clamped_seconds_sum{{{SEL}}}[{RATE}])) / "
                        f"sum(rate(callbridge_truncation_clamped_seconds_count{{{SEL}}}[{RATE}]))",
                        "mean clamped",
                    )
                ],
            ),
            (
                "Marks outstanding",
                "Marks sent to Twilio and not yet echoed, over all calls: assistant audio queued at Twilio.",
                "short",
                "timeseries",
                [(f"sum(callbridge_marks_outstanding{{{SEL}}})", "outstanding")],
            ),
        ],
    ),
    (
        "OpenAI health",
        [
            (
                "OpenAI connects",
                "Connection attempts per second by result.",
                "reqps",
                "timeseries",
                [(f"sum by (result) (rate(callbridge_openai_connects_total{{{SEL}}}[{RATE}]))", "{{result}}")],
            ),
            (
                "OpenAI connect time",
                "TCP + TLS + WebSocket handshake to the Realtime API, p50 and p99.",
                "s",
                "timeseries",
                quantiles("callbridge_call_setup_seconds", extra='phase="openai_connect"'),
            ),
            (
                "OpenAI error events",
                "error events per second by error.code (none: no code; other: past the first 32 codes).",
                "reqps",
                "timeseries",
                [(f"sum by (code) (rate(callbridge_openai_errors_total{{{SEL}}}[{RATE}]))", "{{code}}")],
            ),
            (
                "Tokens used",
                "Tokens per second from response.done usage, by kind.",
                "short",
                "timeseries",
                [(f"sum by (kind) (rate(callbridge_openai_tokens_total{{{SEL}}}[{RATE}]))", "{{kind}}")],
            ),
            (
                "Protocol errors",
                "Frames dropped for breaking the protocol, per second, by leg and kind.",
                "reqps",
                "timeseries",
                [
                    (
                        f"sum by (leg, kind) (rate(callbridge_protocol_errors_total{{{SEL}}}[{RATE}]))",
                        "{{leg}} {{kind}}",
                    )
                ],
            ),
        ],
    ),
    (
        "Safety and lifecycle",
        [
            (
                "Refusals, by reason",
                "Requests and connections refused per second by a safety check: webhook_signature and "
                "upgrade_signature (403), stream_id (403: not ours or expired), stream_reused (409), "
                "max_calls and draining (stream accepted and closed: the caller reaches the fallback), "
                "too_many_streams (503), max_connections (closed at once).",
                "reqps",
                "timeseries",
                [(f"sum by (reason) (rate(callbridge_refused_total{{{SEL}}}[{RATE}]))", "{{reason}}")],
            ),
            (
                "Unsigned instances",
                "Instances running with ALLOW_UNSIGNED_WEBHOOKS=true: Twilio signatures are not checked, "
                "anyone can place calls billed to you. Must be 0 in production.",
                "short",
                "stat",
                [(f"sum(callbridge_unsigned_webhooks{{{SEL}}})", "unsigned")],
            ),
            (
                "Draining",
                "Instances draining after SIGTERM, and the calls they still carry (they run on up to "
                "DRAIN_TIMEOUT_SECS).",
                "short",
                "timeseries",
                [
                    (f"sum(callbridge_draining{{{SEL}}})", "draining instances"),
                    (f"sum(callbridge_drain_calls_left{{{SEL}}} * callbridge_draining{{{SEL}}})", "calls left"),
                ],
            ),
            (
                "Open HTTP connections",
                "Open connections, streams included; bounded by MAX_CONNECTIONS. Refused agent settings "
                "(per agent: callbridge_agent_errors_total) end calls as agent_rejected.",
                "short",
                "timeseries",
                [
                    (f"sum(callbridge_http_connections{{{SEL}}})", "connections"),
                    (
                        f'sum(rate(callbridge_calls_total{{{SEL},outcome="agent_rejected"}}[{RATE}]))',
                        "agent_rejected calls/s",
                    ),
                ],
            ),
        ],
    ),
    (
        "Store",
        [
            (
                "Store queue depth",
                "Writes waiting for the store's writer thread (capacity 65,536; full means appends are dropped).",
                "short",
                "timeseries",
                [(f"max(callbridge_store_queue_depth{{{SEL}}})", "depth")],
            ),
            (
                "Store queue full",
                "Appends refused per second because the queue was full: conversation items are being lost.",
                "reqps",
                "timeseries",
                [(f"sum(rate(callbridge_store_queue_full_total{{{SEL}}}[{RATE}]))", "refused")],
            ),
            (
                "Store items written",
                "Conversation items written per second.",
                "short",
                "timeseries",
                [(f"sum(rate(callbridge_store_items_written_total{{{SEL}}}[{RATE}]))", "written")],
            ),
            (
                "Store batch write time",
                "Time of one batch write by the writer thread, p50 and p99.",
                "s",
                "timeseries",
                quantiles("callbridge_store_write_seconds"),
            ),
            (
                "Store size",
                "Bytes a full export of the store holds (logical data; the file on disk is about 1.5-2x this, "
                "README Storage). Flat once RETENTION or STORE_MAX_BYTES deletes as much as arrives.",
                "bytes",
                "timeseries",
                [(f"max(callbridge_store_logical_bytes{{{SEL}}})", "logical")],
            ),
            (
                "Store deletions and write failures",
                "Whole calls deleted per second by reason (retention, max_bytes); writes that failed (disk_full, io), "
                "and items dropped because writes kept failing.",
                "reqps",
                "timeseries",
                [
                    (
                        f"sum by (reason) (rate(callbridge_store_calls_deleted_total{{{SEL}}}[{RATE}]))",
                        "deleted {{reason}}",
                    ),
                    (
                        f"sum by (error) (rate(callbridge_store_write_errors_total{{{SEL}}}[{RATE}]))",
                        "failed {{error}}",
                    ),
                    (
                        f"sum(rate(callbridge_store_items_unwritten_total{{{SEL}}}[{RATE}]))",
                        "items dropped",
                    ),
                ],
            ),
        ],
    ),
    (
        "Process",
        [
            (
                "CPU",
                "CPU cores used by the process (user + system seconds per second).",
                "percentunit",
                "timeseries",
                [(f"rate(callbridge_process_cpu_seconds_total{{{SEL}}}[{RATE}])", "{{instance}}")],
            ),
            (
                "Resident memory",
                "Resident set size of the process.",
                "bytes",
                "timeseries",
                [(f"callbridge_process_resident_memory_bytes{{{SEL}}}", "{{instance}}")],
            ),
            (
                "Memory per active call",
                "RSS divided by active calls (at least 1): includes the idle baseline, so it falls as calls rise.",
                "bytes",
                "timeseries",
                [
                    (
                        f"callbridge_process_resident_memory_bytes{{{SEL}}} / "
                        f"clamp_min(callbridge_active_calls{{{SEL}}}, 1)",
                        "{{instance}}",
                    )
                ],
            ),
            (
                "Open file descriptors",
                "Open fds of the process: about two sockets per active call plus listeners.",
                "short",
                "timeseries",
                [(f"callbridge_process_open_fds{{{SEL}}}", "{{instance}}")],
            ),
        ],
    ),
]


def panel(pid, x, y, w, h, title, description, unit, kind, targets):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    else:
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}}
    return p


def dashboard():
    panels = []
    pid = 1
    y = 0
    for title, row_panels in ROWS:
        panels.append(
            {"id": pid, "type": "row", "title": title, "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
        )
        pid += 1
        y += 1
        width = 24 // min(len(row_panels), 4)
        for i, spec in enumerate(row_panels):
            x = (i % 4) * width
            if i and i % 4 == 0:
                y += 8
            panels.append(panel(pid, x, y, width, 8, *spec))
            pid += 1
        y += 8
    return {
        "uid": "callbridge",
        "title": "callbridge",
        "description": "Twilio Media Streams to OpenAI Realtime proxy: traffic, latency, barge-in, OpenAI, safety, store, process. "
        "Generated by dashboards/generate.py; do not edit by hand.",
        "tags": ["callbridge", "twilio", "openai-realtime"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "options": [],
                },
                {
                    "name": "instance",
                    "label": "Instance",
                    "type": "query",
                    "datasource": DS,
                    "definition": "label_values(callbridge_active_calls, instance)",
                    "query": {"query": "label_values(callbridge_active_calls, instance)", "refId": "instance"},
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "current": {},
                    "hide": 0,
                    "refresh": 2,
                    "sort": 1,
                    "options": [],
                },
            ]
        },
        "panels": panels,
    }


def render():
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv):
    text = render()
    if argv[1:] == ["--check"]:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} differs from the generator's output: run python3 dashboards/generate.py", file=sys.stderr)
            return 1
        print(f"{OUT.name} matches the generator")
        return 0
    if argv[1:]:
        print("usage: generate.py [--check]", file=sys.stderr)
        return 2
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
