"""Fake-Twilio client: drives any Media Streams server the way Twilio does, and reports what came back.

What: for each stream, POST the voice webhook (form-encoded, with a dummy `X-Twilio-Signature`),
take `<Connect><Stream url>` and its `<Parameter>`s from the TwiML, open the WebSocket (no
subprotocol unless `--subprotocol`), send `connected`, `start`, then N x 20 ms µ-law `media`
frames on an absolute-deadline schedule (real time) with Twilio-style `sequenceNumber`, `chunk`
and `timestamp`, optional `dtmf`, then `stop`. Caller audio is silence (0xFF) with a speech clip
(default: the repo's `tests/data/hello-world.ulaw`) starting at each `--speech-at` time.

What it prints per run: outbound `media` messages received (count, payload sizes, audio ms),
gaps between consecutive messages within a burst and their error against the previous payload's
duration (the ideal just-in-time spacing), a simple Twilio playback-buffer model (audio plays at
real time from arrival; "starved" = playback ran dry between two messages of the same burst),
first audio, response latency (end of each speech clip -> next audio), `clear`s with latency from
the latest speech onset or DTMF, audio received after a `clear`, and any message that is not
exactly one of Twilio's three documented outbound shapes.

Marks are echoed like Twilio does: when the audio sent before them has played (playback modelled
at real time from arrival), or at once on `clear`.

Assumptions: loopback, plain `ws://` (TLS is not modelled; `--connect-plain` follows a `wss://`
TwiML URL over plain TCP). The Rust `handset-sim` is the precise instrument; this client exists so
the peer can be checked with nothing but its own venv. Timing numbers come from this Python
process's event loop, so they include its own scheduling noise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import math
import random
import statistics
import sys
import time
import urllib.parse
import urllib.request
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # Python <= 3.12
    except ImportError:  # Python >= 3.13
        import audioop_lts as audioop  # type: ignore[no-redef]

from websockets.asyncio.client import connect

FRAME_BYTES = 160  # 20 ms of 8 kHz µ-law
FRAME_SECS = 0.020
SILENCE = b"\xff" * FRAME_BYTES
BURST_GAP_SECS = 0.25  # a longer pause between two outbound messages starts a new burst
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLIP = REPO_ROOT / "tests" / "data" / "hello-world.ulaw"


def load_clip(path: str | None, tone_secs: float) -> bytes:
    """Caller speech as 8 kHz µ-law: a raw `.ulaw` file, a mono 16-bit 8 kHz WAV, or a tone."""
    if path is None:
        n = int(tone_secs * 8000)
        pcm = b"".join(
            int(8000 * math.sin(2 * math.pi * 440 * i / 8000)).to_bytes(2, "little", signed=True) for i in range(n)
        )
        return audioop.lin2ulaw(pcm, 2)
    p = Path(path)
    if p.suffix.lower() == ".wav":
        import wave

        with wave.open(str(p), "rb") as w:
            if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, 8000):
                raise SystemExit(f"{p}: need 8 kHz mono 16-bit wav")
            return audioop.lin2ulaw(w.readframes(w.getnframes()), 2)
    return p.read_bytes()


def speech_span(clip: bytes, threshold: int = 500) -> tuple[float, float]:
    """Offsets (s) of the first and the end of the last 20 ms frame whose RMS exceeds `threshold`."""
    pcm = audioop.ulaw2lin(clip, 2)
    loud = [k for k in range(len(pcm) // 320) if audioop.rms(pcm[k * 320 : (k + 1) * 320], 2) > threshold]
    if not loud:
        return 0.0, len(clip) / 8000
    return loud[0] * FRAME_SECS, (loud[-1] + 1) * FRAME_SECS


def twilio_signature(token: str | None, url: str, params: dict[str, str]) -> str:
    """`X-Twilio-Signature`: base64 HMAC-SHA1 over the URL then each sorted name+value.

    Without a token a dummy value is sent (servers that don't check it, like Pipecat, accept it).
    """
    if not token:
        return "bm90LXNpZ25lZA=="
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def post_webhook(url: str, call_sid: str, token: str | None) -> tuple[str, dict[str, str], str]:
    """POSTs the voice webhook like Twilio; returns (stream url, parameters, TwiML)."""
    form = {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15550001111",
        "To": "+15550002222",
    }
    req = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(token, url, form),
        },
    )
    with urllib.request.urlopen(req, timeout=10) as res:
        twiml = res.read().decode()
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    if stream is None or "url" not in stream.attrib:
        raise RuntimeError(f"no <Connect><Stream url> in TwiML: {twiml}")
    params = {p.attrib["name"]: p.attrib.get("value", "") for p in stream.findall("Parameter")}
    return stream.attrib["url"], params, twiml


@dataclass
class StreamResult:
    index: int
    ok: bool = False
    error: str | None = None
    subprotocol: str | None = None
    frames_sent: int = 0
    connected_at: float = 0.0  # seconds from stream start, when the WS was open
    media: list[tuple[float, int]] = field(default_factory=list)  # (arrival s since start, µ-law bytes)
    clears: list[float] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    marks_echoed: int = 0
    malformed: list[str] = field(default_factory=list)
    # (onset, end) of audible speech in each clip, s since start (clip start + its leading silence)
    speech: list[tuple[float, float]] = field(default_factory=list)
    dtmf: list[float] = field(default_factory=list)
    close: str | None = None


def check_shape(msg: dict, stream_sid: str) -> str | None:
    """Returns the event name if `msg` is exactly a documented server->Twilio shape, else None."""
    keys = sorted(msg.keys())
    if msg.get("streamSid") != stream_sid:
        return None
    ev = msg.get("event")
    if ev == "media" and keys == ["event", "media", "streamSid"]:
        m = msg["media"]
        if isinstance(m, dict) and list(m.keys()) == ["payload"] and isinstance(m["payload"], str):
            return "media"
    if ev == "mark" and keys == ["event", "mark", "streamSid"]:
        m = msg["mark"]
        if isinstance(m, dict) and list(m.keys()) == ["name"] and isinstance(m["name"], str):
            return "mark"
    if ev == "clear" and keys == ["event", "streamSid"]:
        return "clear"
    return None


async def run_stream(i: int, args: argparse.Namespace, clip: bytes) -> StreamResult:
    res = StreamResult(index=i)
    call_sid = f"CA{i:032x}"
    stream_sid = f"MZ{random.getrandbits(128):032x}"
    try:
        if args.ws_url:
            ws_url, params = args.ws_url, {"callSid": call_sid}
        else:
            ws_url, params, _ = await asyncio.to_thread(
                post_webhook, args.url.rstrip("/") + args.webhook_path, call_sid, args.auth_token
            )
        # The upgrade is signed over the <Stream url> exactly as written, with no parameters.
        signature = twilio_signature(args.auth_token, ws_url, {})
        if ws_url.startswith("wss://") and args.connect_plain:
            ws_url = "ws://" + ws_url[len("wss://") :]
        # Twilio dials wss on 443; on loopback the TwiML carries ws://host:port.
        protocols = ["audio.twilio.com"] if args.subprotocol else None
        async with connect(
            ws_url,
            subprotocols=protocols,
            additional_headers={"X-Twilio-Signature": signature},
            max_size=None,
            compression=None,
            open_timeout=30,
        ) as ws:
            res.subprotocol = ws.subprotocol
            # Caller audio schedule: speech clip at each onset, silence elsewhere.
            n = args.frames
            audio = bytearray(SILENCE * n)
            for onset in args.speech_at:
                start = int(round(onset / FRAME_SECS)) * FRAME_BYTES
                if start >= len(audio):
                    continue
                piece = clip[: len(audio) - start]
                audio[start : start + len(piece)] = piece
                lead, tail = speech_span(piece)
                res.speech.append((onset + lead, onset + tail))
            dtmf_frames = {int(round(t / FRAME_SECS)): t for t in args.dtmf_at}

            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            seq_counter = iter(range(1, 1 << 62))

            def next_seq() -> str:
                return str(next(seq_counter))

            start_msg = {
                "event": "start",
                "sequenceNumber": next_seq(),
                "start": {
                    "accountSid": "AC" + "0" * 32,
                    "streamSid": stream_sid,
                    "callSid": call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": params,
                },
                "streamSid": stream_sid,
            }
            t0 = time.monotonic()
            await ws.send(json.dumps(start_msg))

            # Twilio's playback buffer, simplified: audio plays at real time from arrival; a mark
            # is echoed when the audio sent before it has played; `clear` empties the buffer and
            # echoes every pending mark at once.
            play_end = t0
            pending_marks: list[tuple[float, str]] = []
            marks_changed = asyncio.Event()

            async def mark_echoer():
                while True:
                    if not pending_marks:
                        marks_changed.clear()
                        await marks_changed.wait()
                        continue
                    delay = pending_marks[0][0] - time.monotonic()
                    if delay > 0:
                        marks_changed.clear()
                        try:
                            await asyncio.wait_for(marks_changed.wait(), delay)
                        except TimeoutError:
                            pass
                        continue
                    _, name = pending_marks.pop(0)
                    res.marks_echoed += 1
                    await ws.send(
                        json.dumps(
                            {
                                "event": "mark",
                                "sequenceNumber": next_seq(),
                                "streamSid": stream_sid,
                                "mark": {"name": name},
                            }
                        )
                    )

            async def receiver():
                nonlocal play_end
                async for raw in ws:
                    now = time.monotonic()
                    at = now - t0
                    if isinstance(raw, bytes):
                        res.malformed.append("binary frame")
                        continue
                    try:
                        msg = json.loads(raw)
                    except json.JSONDecodeError:
                        res.malformed.append(raw[:200])
                        continue
                    kind = check_shape(msg, stream_sid) if isinstance(msg, dict) else None
                    if kind == "media":
                        try:
                            nbytes = len(base64.b64decode(msg["media"]["payload"], validate=True))
                        except ValueError:
                            res.malformed.append(raw[:200])
                            continue
                        res.media.append((at, nbytes))
                        play_end = max(play_end, now) + nbytes / 8000
                    elif kind == "clear":
                        res.clears.append(at)
                        play_end = now
                        pending_marks[:] = [(now, name) for _, name in pending_marks]
                        marks_changed.set()
                    elif kind == "mark":
                        res.marks.append((at, msg["mark"]["name"]))
                        pending_marks.append((max(now, play_end), msg["mark"]["name"]))
                        marks_changed.set()
                    else:
                        res.malformed.append(raw[:200])

            recv_task = asyncio.create_task(receiver())
            mark_task = asyncio.create_task(mark_echoer())
            for k in range(n):
                deadline = t0 + (k + 1) * FRAME_SECS
                delay = deadline - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                payload = base64.b64encode(audio[k * FRAME_BYTES : (k + 1) * FRAME_BYTES]).decode()
                await ws.send(
                    json.dumps(
                        {
                            "event": "media",
                            "sequenceNumber": next_seq(),
                            "media": {
                                "track": "inbound",
                                "chunk": str(k + 1),
                                "timestamp": str(k * 20),
                                "payload": payload,
                            },
                            "streamSid": stream_sid,
                        }
                    )
                )
                res.frames_sent += 1
                if k in dtmf_frames:
                    res.dtmf.append(time.monotonic() - t0)
                    await ws.send(
                        json.dumps(
                            {
                                "event": "dtmf",
                                "streamSid": stream_sid,
                                "sequenceNumber": next_seq(),
                                "dtmf": {"track": "inbound_track", "digit": "1"},
                            }
                        )
                    )
            # Let the tail of any playback arrive, then stop like Twilio.
            await asyncio.sleep(args.linger)
            await ws.send(
                json.dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": next_seq(),
                        "stop": {"accountSid": "AC" + "0" * 32, "callSid": call_sid},
                        "streamSid": stream_sid,
                    }
                )
            )
            mark_task.cancel()
            await ws.close()
            for task in (recv_task, mark_task):
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
            res.close = f"{ws.close_code} {ws.close_reason or ''}".strip()
            res.ok = True
    except Exception as e:  # report, don't crash the whole run
        res.error = f"{e.__class__.__name__}: {e}"
    return res


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def analyse(res: StreamResult) -> dict:
    """Per-stream numbers (all times in ms)."""
    media = res.media
    gaps, errors, starved = [], [], []
    bursts = []
    play_end = None
    burst = None
    for j, (at, nbytes) in enumerate(media):
        dur = nbytes / 8000
        if j > 0:
            gap = at - media[j - 1][0]
            if gap <= BURST_GAP_SECS:
                gaps.append(gap * 1000)
                errors.append((gap - media[j - 1][1] / 8000) * 1000)
                if play_end is not None and at > play_end:
                    starved.append((at - play_end) * 1000)
        if burst is None or (j > 0 and at - media[j - 1][0] > BURST_GAP_SECS):
            burst = {"start_ms": at * 1000, "messages": 0, "audio_ms": 0.0}
            bursts.append(burst)
        burst["messages"] += 1
        burst["audio_ms"] += dur * 1000
        burst["end_ms"] = at * 1000
        play_end = max(play_end or 0.0, at) + dur
    sizes: dict[int, int] = {}
    for _, nbytes in media:
        sizes[nbytes] = sizes.get(nbytes, 0) + 1
    # Response latency: end of each speech clip -> first audio after it.
    responses = []
    for _, end in res.speech:
        after = [at for at, _ in media if at >= end]
        if after:
            responses.append((after[0] - end) * 1000)
    # Clear latency from the latest speech onset or DTMF before it; audio arriving after it.
    clear_lat, after_clear = [], []
    triggers = sorted([s for s, _ in res.speech] + res.dtmf)
    for c in res.clears:
        before = [t for t in triggers if t <= c]
        if before:
            clear_lat.append((c - before[-1]) * 1000)
        after_clear.append(sum(n for at, n in media if c < at <= c + 0.5) / 8)
    return {
        "ok": res.ok,
        "error": res.error,
        "subprotocol": res.subprotocol,
        "frames_sent": res.frames_sent,
        "media_messages": len(media),
        "audio_ms": sum(n for _, n in media) / 8,
        "payload_sizes": dict(sorted(sizes.items())),
        "first_media_ms": media[0][0] * 1000 if media else None,
        "gap_ms": {
            "n": len(gaps),
            "mean": statistics.fmean(gaps) if gaps else None,
            "stdev": statistics.pstdev(gaps) if gaps else None,
            "p50": pct(gaps, 0.5) if gaps else None,
            "p99": pct(gaps, 0.99) if gaps else None,
            "max": max(gaps) if gaps else None,
        },
        "gap_error_ms": {
            "p50_abs": pct([abs(e) for e in errors], 0.5) if errors else None,
            "p99_abs": pct([abs(e) for e in errors], 0.99) if errors else None,
            "max_abs": max(abs(e) for e in errors) if errors else None,
        },
        "starved": {"count": len(starved), "total_ms": sum(starved), "max_ms": max(starved) if starved else 0.0},
        "bursts": bursts,
        "response_ms": responses,
        "clears_ms": [c * 1000 for c in res.clears],
        "clear_latency_ms": clear_lat,
        "audio_after_clear_500ms_ms": after_clear,
        "marks": len(res.marks),
        "marks_echoed": res.marks_echoed,
        "malformed": res.malformed[:5],
        "malformed_count": len(res.malformed),
        "close": res.close,
    }


def fmt(x, digits=1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def print_single(a: dict):
    print(f"  ok={a['ok']} error={a['error']} subprotocol={a['subprotocol']} close={a['close']}")
    print(f"  frames sent={a['frames_sent']}  media received={a['media_messages']}  audio={fmt(a['audio_ms'], 0)} ms")
    print(f"  payload sizes (bytes: count) = {a['payload_sizes']}")
    g, e, s = a["gap_ms"], a["gap_error_ms"], a["starved"]
    print(
        f"  gaps within bursts: n={g['n']} mean={fmt(g['mean'])} stdev={fmt(g['stdev'])} "
        f"p50={fmt(g['p50'])} p99={fmt(g['p99'])} max={fmt(g['max'])} ms"
    )
    print(f"  gap error vs payload duration: p50|e|={fmt(e['p50_abs'])} p99|e|={fmt(e['p99_abs'])} max|e|={fmt(e['max_abs'])} ms")
    print(f"  playback model: starved {s['count']} times, {fmt(s['total_ms'])} ms total, max {fmt(s['max_ms'])} ms")
    print(f"  first media at {fmt(a['first_media_ms'])} ms after start")
    for b in a["bursts"]:
        print(
            f"    burst {fmt(b['start_ms'], 0)}..{fmt(b['end_ms'], 0)} ms: {b['messages']} msgs, {fmt(b['audio_ms'], 0)} ms audio"
        )
    print(f"  response latency (speech end -> next audio) ms: {[round(x, 1) for x in a['response_ms']]}")
    print(
        f"  clears at ms: {[round(x, 1) for x in a['clears_ms']]}; latency from onset/dtmf ms: "
        f"{[round(x, 1) for x in a['clear_latency_ms']]}; audio received <=500 ms after clear (ms): "
        f"{[round(x) for x in a['audio_after_clear_500ms_ms']]}"
    )
    print(f"  marks={a['marks']} echoed={a['marks_echoed']} malformed={a['malformed_count']} {a['malformed']}")


def print_aggregate(results: list[dict]):
    ok = [a for a in results if a["ok"]]
    gaps = [a["gap_ms"] for a in ok if a["gap_ms"]["n"]]
    print(f"streams: {len(results)} ok={len(ok)} failed={len(results) - len(ok)}")
    for a in results:
        if not a["ok"]:
            print(f"  failed: {a['error']}")
            break
    if not ok:
        return
    sent_ms = statistics.fmean(a["frames_sent"] for a in ok) * 20
    print(f"  audio received per stream: mean {fmt(statistics.fmean(a['audio_ms'] for a in ok), 0)} ms (caller sent {fmt(sent_ms, 0)} ms)")
    if gaps:
        print(
            f"  gaps within bursts (per-stream mean of means / max p99 / max max): "
            f"{fmt(statistics.fmean(g['mean'] for g in gaps))} / {fmt(max(g['p99'] for g in gaps))} / {fmt(max(g['max'] for g in gaps))} ms"
        )
        errs = [a["gap_error_ms"] for a in ok if a["gap_error_ms"]["p99_abs"] is not None]
        print(f"  gap error p99|e| (median over streams / worst): {fmt(pct([e['p99_abs'] for e in errs], 0.5))} / {fmt(max(e['p99_abs'] for e in errs))} ms")
    starved = [a["starved"] for a in ok]
    print(
        f"  playback starved: {sum(1 for s in starved if s['count'])} of {len(ok)} streams, "
        f"total {fmt(sum(s['total_ms'] for s in starved))} ms, worst {fmt(max(s['max_ms'] for s in starved))} ms"
    )
    firsts = [a["first_media_ms"] for a in ok if a["first_media_ms"] is not None]
    if firsts:
        print(f"  first media ms: p50 {fmt(pct(firsts, 0.5))} max {fmt(max(firsts))}")
    resp = [x for a in ok for x in a["response_ms"]]
    if resp:
        print(f"  response latency ms: p50 {fmt(pct(resp, 0.5))} p99 {fmt(pct(resp, 0.99))} max {fmt(max(resp))}")
    cl = [x for a in ok for x in a["clear_latency_ms"]]
    print(f"  clears: {sum(len(a['clears_ms']) for a in ok)}" + (f"; latency ms p50 {fmt(pct(cl, 0.5))} max {fmt(max(cl))}" if cl else ""))
    print(f"  malformed: {sum(a['malformed_count'] for a in ok)}  marks: {sum(a['marks'] for a in ok)}")


def proc_sample(pid: int) -> tuple[float, int, int]:
    """(CPU seconds used, VmRSS KiB, VmHWM KiB) of a process, from /proc."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def parse_times(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()] if s else []


async def main_async(args: argparse.Namespace) -> list[dict]:
    clip = load_clip(None if args.tone else args.audio, args.tone_secs)
    tasks = []
    for i in range(args.streams):
        tasks.append(asyncio.create_task(run_stream(i, args, clip)))
        if args.ramp_ms:
            await asyncio.sleep(args.ramp_ms / 1000)
    return [analyse(r) for r in await asyncio.gather(*tasks)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8765", help="server base URL for the webhook")
    p.add_argument("--port", type=int, default=None, help="shorthand for --url http://127.0.0.1:PORT")
    p.add_argument("--webhook-path", default="/webhook/incoming_call")
    p.add_argument("--ws-url", default=None, help="skip the webhook and connect here")
    p.add_argument("--frames", type=int, default=250, help="20 ms caller frames to send (default 250 = 5 s)")
    p.add_argument("--audio", default=str(DEFAULT_CLIP), help="caller speech clip: raw 8 kHz µ-law or 8 kHz WAV")
    p.add_argument("--tone", action="store_true", help="use a 440 Hz tone instead of the clip")
    p.add_argument("--tone-secs", type=float, default=1.0)
    p.add_argument("--speech-at", type=parse_times, default=[2.0], help="comma-separated onsets in s (default 2.0)")
    p.add_argument("--dtmf-at", type=parse_times, default=[], help="comma-separated DTMF times in s")
    p.add_argument("--streams", type=int, default=1, help="concurrent streams")
    p.add_argument("--ramp-ms", type=float, default=0.0, help="delay between stream starts")
    p.add_argument("--linger", type=float, default=0.5, help="seconds to keep reading after the last frame")
    p.add_argument("--subprotocol", action="store_true", help="offer Sec-WebSocket-Protocol: audio.twilio.com")
    p.add_argument("--auth-token", default=None, help="sign webhook and upgrade like Twilio (default: dummy signature)")
    p.add_argument(
        "--connect-plain",
        action="store_true",
        help="if the TwiML says wss://, connect with plain ws:// to the same host (TLS terminated elsewhere)",
    )
    p.add_argument("--json", default=None, help="write per-stream results here")
    p.add_argument("--server-pid", type=int, default=None, help="report this process's CPU and RSS over the run")
    args = p.parse_args()
    if args.port:
        args.url = f"http://127.0.0.1:{args.port}"
    before = proc_sample(args.server_pid) if args.server_pid else None
    wall0 = time.monotonic()
    results = asyncio.run(main_async(args))
    wall = time.monotonic() - wall0
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if len(results) == 1:
        print("stream 0:")
        print_single(results[0])
    else:
        print_aggregate(results)
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"client: CPU {ru.ru_utime + ru.ru_stime:.2f} s over {wall:.1f} s wall; load average {Path('/proc/loadavg').read_text().split()[0]}")
    if before:
        after = proc_sample(args.server_pid)
        cpu = after[0] - before[0]
        print(
            f"server pid {args.server_pid}: CPU {cpu:.2f} s over {wall:.1f} s wall = {100 * cpu / wall:.1f} % of one core; "
            f"RSS {before[1] // 1024} -> {after[1] // 1024} MiB, peak (VmHWM) {after[2] // 1024} MiB"
        )
    sys.exit(0 if all(a["ok"] for a in results) else 1)


if __name__ == "__main__":
    main()
