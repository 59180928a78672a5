"""Pipecat echo bot: the peer Media Streams server for side-by-side benchmarks with Handset.

What: a FastAPI app that a Twilio simulator drives exactly like Handset. `POST
/webhook/incoming_call` answers TwiML `<Connect><Stream url="ws://HOST:PORT/ws">`; the WebSocket
at `/ws` runs one Pipecat pipeline per call built from Pipecat's own telephony pieces:
`parse_telephony_websocket` (reads `connected` + `start`), `TwilioFrameSerializer(auto_hang_up=False)`
and `FastAPIWebsocketTransport`, so inbound decoding, outbound chunking (40 ms), just-in-time
pacing, the serializer and `clear` on interruption are all Pipecat's real code paths.

Why: a like-for-like anchor. Two behaviours are offered:

* `--mode utterance` (default, like Handset's echo agent): play a greeting (Handset's own
  `engine/assets/greeting.ulaw`), then, with Silero VAD, record each caller utterance and play it
  back after the VAD reports the end of speech. Caller speech while bot audio is playing is a
  barge-in: `broadcast_interruption()` drops Pipecat's output queue and the serializer sends
  `clear`. Bot audio is pushed as `TTSStartedFrame` / `TTSAudioRawFrame` / `TTSStoppedFrame`, so
  Pipecat's bot-speaking bookkeeping works as it does behind a real TTS service.
* `--mode frames`: every inbound 20 ms frame is turned straight into an output frame (the
  passthrough `EchoProcessor` used for Pipecat's capacity numbers); `--vad` adds Silero in front.

Assumptions: loopback benchmarking only. The WebSocket is accepted without a subprotocol unless
the client offers `audio.twilio.com` (then exactly that is echoed); `X-Twilio-Signature` is
ignored on both the webhook and the upgrade (Pipecat does not check it); no Twilio REST calls
and no cloud services. Pipeline rate is 8 kHz unless `--rate` says otherwise (16 kHz forces
Pipecat's soxr resamplers in both directions). RTVI, turn tracking and the 300 s idle timeout are
off: they do nothing useful for a Twilio echo bot and would only add cost to the peer.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import quoteattr

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # Python <= 3.12
    except ImportError:  # Python >= 3.13: Pipecat depends on audioop-lts there
        import audioop_lts as audioop  # type: ignore[no-redef]

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from loguru import logger

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

TWILIO_SUBPROTOCOL = "audio.twilio.com"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GREETING = REPO_ROOT / "engine" / "assets" / "greeting.ulaw"


def load_greeting(path: str, rate: int) -> bytes:
    """Reads 8 kHz µ-law (raw `.ulaw`) or a 16-bit mono WAV and returns PCM16 at `rate`."""
    p = Path(path)
    if p.suffix.lower() == ".wav":
        import wave

        with wave.open(str(p), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise ValueError(f"{p}: need mono 16-bit wav")
            src_rate = w.getframerate()
            pcm = w.readframes(w.getnframes())
    else:
        src_rate = 8000
        pcm = audioop.ulaw2lin(p.read_bytes(), 2)
    if src_rate != rate:
        import numpy as np
        import soxr

        samples = np.frombuffer(pcm, dtype=np.int16)
        pcm = soxr.resample(samples, src_rate, rate).astype(np.int16).tobytes()
    return pcm


class EchoBot(FrameProcessor):
    """Echoes caller audio back, per utterance (with VAD) or per frame.

    Sits between the input transport (plus an optional `VADProcessor`) and the output
    transport. Caller audio is consumed here, never forwarded.
    """

    def __init__(
        self,
        *,
        mode: str,
        rate: int,
        greeting: bytes | None,
        interrupt: str,
        dtmf_barge_in: bool,
        vad_start_secs: float,
        vad_stop_secs: float,
        max_utterance_secs: float,
        stats: "Stats",
    ):
        super().__init__()
        self._mode = mode
        self._rate = rate
        self._greeting = greeting
        self._interrupt = interrupt
        self._dtmf_barge_in = dtmf_barge_in
        self._bytes_per_sec = rate * 2
        # Keep enough caller audio before the VAD's decision to include the onset it needed.
        self._pre_roll_bytes = int((vad_start_secs + 0.1) * self._bytes_per_sec) & ~1
        self._trim_tail_bytes = int(max(0.0, vad_stop_secs - 0.02) * self._bytes_per_sec) & ~1
        self._max_bytes = int(max_utterance_secs * self._bytes_per_sec)
        self._pre_roll: collections.deque[bytes] = collections.deque()
        self._pre_roll_len = 0
        self._recording: bytearray | None = None
        # Bot audio handed to the output transport and not yet reported finished.
        self._playing = False
        self._bot_speaking = False
        self._stats = stats

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)

        if isinstance(frame, InputAudioRawFrame):
            if self._mode == "frames":
                await self.push_frame(
                    OutputAudioRawFrame(
                        audio=frame.audio,
                        sample_rate=frame.sample_rate,
                        num_channels=frame.num_channels,
                    )
                )
            else:
                self._record(frame.audio)
            return

        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self._mode == "utterance" and self._greeting:
                await self._play(self._greeting)
            return

        if isinstance(frame, VADUserStartedSpeakingFrame):
            await self._maybe_interrupt()
            if self._mode == "utterance":
                self._start_recording()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            if self._mode == "utterance" and self._recording is not None:
                utterance = bytes(self._recording)
                self._recording = None
                if len(utterance) > self._trim_tail_bytes:
                    utterance = utterance[: len(utterance) - self._trim_tail_bytes]
                if utterance:
                    await self._play(utterance)
        elif isinstance(frame, InputDTMFFrame):
            if self._dtmf_barge_in:
                await self._interrupt_now()
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            self._playing = False
        elif isinstance(frame, InterruptionFrame):
            self._playing = False

        await self.push_frame(frame, direction)

    def _record(self, audio: bytes):
        if self._recording is not None:
            if len(self._recording) + len(audio) <= self._max_bytes:
                self._recording.extend(audio)
        self._pre_roll.append(audio)
        self._pre_roll_len += len(audio)
        while self._pre_roll and self._pre_roll_len - len(self._pre_roll[0]) >= self._pre_roll_bytes:
            self._pre_roll_len -= len(self._pre_roll.popleft())

    def _start_recording(self):
        self._recording = bytearray()
        for chunk in self._pre_roll:
            self._recording.extend(chunk)

    async def _maybe_interrupt(self):
        if self._interrupt == "always" or (
            self._interrupt == "speaking"
            and (self._mode == "frames" or self._playing or self._bot_speaking)
        ):
            await self._interrupt_now()

    async def _interrupt_now(self):
        self._stats.interruptions += 1
        self._playing = False
        await self.broadcast_interruption()

    async def _play(self, pcm: bytes):
        context_id = uuid.uuid4().hex
        self._playing = True
        await self.push_frame(TTSStartedFrame(context_id=context_id))
        await self.push_frame(
            TTSAudioRawFrame(audio=pcm, sample_rate=self._rate, num_channels=1, context_id=context_id)
        )
        await self.push_frame(TTSStoppedFrame(context_id=context_id))


class Stats:
    """Process-wide counters served at `GET /stats`."""

    def __init__(self):
        self.calls_active = 0
        self.calls_total = 0
        self.calls_failed = 0
        self.interruptions = 0
        self.loop_lag_ms: collections.deque[float] = collections.deque(maxlen=3000)

    def as_dict(self) -> dict:
        lag = sorted(self.loop_lag_ms)

        def pct(q: float) -> float | None:
            return round(lag[min(len(lag) - 1, int(q * len(lag)))], 3) if lag else None

        return {
            "pid": os.getpid(),
            "calls_active": self.calls_active,
            "calls_total": self.calls_total,
            "calls_failed": self.calls_failed,
            "interruptions": self.interruptions,
            "loop_lag_ms": {"n": len(lag), "p50": pct(0.5), "p99": pct(0.99), "max": lag[-1] if lag else None},
        }


async def loop_lag_monitor(stats: Stats, period: float = 0.01):
    """Samples how late the event loop wakes from a `period` sleep, in milliseconds."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(period)
        stats.loop_lag_ms.append((time.monotonic() - t - period) * 1000.0)


def stream_url(args: argparse.Namespace, request: Request) -> str:
    """The `<Stream url>`: host from `--public-url` if given, else from the request's Host."""
    if args.public_url:
        parts = urlsplit(args.public_url)
        scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
        return f"{scheme}://{parts.netloc}/ws"
    host = request.headers.get("host") or f"{args.host}:{args.port}"
    return f"ws://{host}/ws"


def build_app(args: argparse.Namespace) -> FastAPI:
    stats = Stats()
    greeting = None
    if args.mode == "utterance" and args.greeting != "none":
        greeting = load_greeting(args.greeting, args.rate)
    vad_params = VADParams(start_secs=args.vad_start_secs, stop_secs=args.vad_stop_secs)
    use_vad = args.mode == "utterance" or args.vad

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        monitor = asyncio.get_running_loop().create_task(loop_lag_monitor(stats)) if args.loop_lag else None
        print(
            f"pipecat-echo: listening on {args.host}:{args.port} pid={os.getpid()} mode={args.mode} "
            f"rate={args.rate} vad={use_vad} interrupt={args.interrupt} "
            f"greeting={'yes' if greeting else 'no'} chunks={args.chunks}",
            flush=True,
        )
        yield
        if monitor:
            monitor.cancel()

    app = FastAPI(title="pipecat-echo", lifespan=lifespan)

    @app.post("/webhook/incoming_call")
    async def incoming_call(request: Request):
        # The body is form-encoded like Twilio's; X-Twilio-Signature is not checked.
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        call_sid = form.get("CallSid", [""])[0]
        twiml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Connect><Stream url={quoteattr(stream_url(args, request))}>"
            f'<Parameter name="callSid" value={quoteattr(call_sid)}/>'
            "</Stream></Connect></Response>"
        )
        return Response(content=twiml, media_type="text/xml")

    @app.get("/ws")
    async def ws_without_upgrade():
        return PlainTextResponse("WebSocket only", status_code=426, headers={"Upgrade": "websocket"})

    @app.get("/stats")
    async def get_stats():
        return JSONResponse(stats.as_dict())

    @app.websocket("/ws")
    async def media_stream(websocket: WebSocket):
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol=TWILIO_SUBPROTOCOL if TWILIO_SUBPROTOCOL in offered else None)
        stats.calls_total += 1
        stats.calls_active += 1
        try:
            transport_type, call_data = await parse_telephony_websocket(websocket)
            if transport_type != "twilio":
                raise ValueError(f"not a Twilio stream: {transport_type}")
            serializer = TwilioFrameSerializer(
                stream_sid=call_data["stream_id"],
                call_sid=call_data["call_id"],
                params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
            )
            transport = FastAPIWebsocketTransport(
                websocket=websocket,
                params=FastAPIWebsocketParams(
                    audio_in_enabled=True,
                    audio_out_enabled=True,
                    add_wav_header=False,
                    serializer=serializer,
                    audio_out_10ms_chunks=args.chunks,
                    allowed_origins=[],
                ),
            )
            processors = [transport.input()]
            if use_vad:
                processors.append(
                    VADProcessor(vad_analyzer=SileroVADAnalyzer(sample_rate=None, params=vad_params))
                )
            processors.append(
                EchoBot(
                    mode=args.mode,
                    rate=args.rate,
                    greeting=greeting,
                    interrupt=args.interrupt,
                    dtmf_barge_in=args.dtmf_barge_in,
                    vad_start_secs=args.vad_start_secs,
                    vad_stop_secs=args.vad_stop_secs,
                    max_utterance_secs=args.max_utterance_secs,
                    stats=stats,
                )
            )
            processors.append(transport.output())
            worker = PipelineWorker(
                Pipeline(processors),
                params=PipelineParams(audio_in_sample_rate=args.rate, audio_out_sample_rate=args.rate),
                enable_rtvi=False,
                enable_turn_tracking=False,
                idle_timeout_secs=None,
            )

            @transport.event_handler("on_client_disconnected")
            async def _on_disconnected(_transport, _ws):
                await worker.cancel()

            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            await runner.run()
        except Exception as e:  # one call failing must not take the server down
            stats.calls_failed += 1
            logger.warning(f"call failed: {e.__class__.__name__}: {e}")
        finally:
            stats.calls_active -= 1

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument(
        "--public-url",
        default=None,
        help="base URL Twilio reaches (e.g. http://127.0.0.1:8765); its host goes in <Stream url>",
    )
    p.add_argument(
        "--mode",
        choices=["utterance", "frames"],
        default="utterance",
        help="utterance: greeting, then echo each VAD utterance (like Handset's echo agent); "
        "frames: echo every inbound frame straight back",
    )
    p.add_argument("--rate", type=int, choices=[8000, 16000], default=8000, help="pipeline sample rate")
    p.add_argument("--chunks", type=int, default=4, help="audio_out_10ms_chunks (Pipecat default 4 = 40 ms)")
    p.add_argument("--vad", action="store_true", help="frames mode: add Silero VAD (utterance mode always has it)")
    p.add_argument("--vad-start-secs", type=float, default=0.2, help="VADParams.start_secs (Pipecat default 0.2)")
    p.add_argument("--vad-stop-secs", type=float, default=0.2, help="VADParams.stop_secs (Pipecat default 0.2)")
    p.add_argument(
        "--interrupt",
        choices=["speaking", "always", "never"],
        default="speaking",
        help="on VAD speech start: interrupt (-> clear) only while bot audio plays (default), "
        "always (what Pipecat's UserTurnProcessor does), or never",
    )
    p.add_argument("--dtmf-barge-in", action="store_true", help="an inbound dtmf interrupts (-> clear)")
    p.add_argument(
        "--greeting",
        default=str(DEFAULT_GREETING),
        help="greeting played at stream start in utterance mode: raw 8 kHz µ-law or 16-bit mono WAV; "
        "'none' for no greeting (default: Handset's engine/assets/greeting.ulaw)",
    )
    p.add_argument("--max-utterance-secs", type=float, default=10.0, help="longest utterance echoed")
    p.add_argument("--loop-lag", action="store_true", help="sample event-loop lateness (see GET /stats)")
    p.add_argument("--log-level", default="WARNING", help="loguru level for Pipecat (default WARNING)")
    args = p.parse_args(argv)
    if args.mode == "utterance" and args.greeting != "none" and not Path(args.greeting).exists():
        p.error(f"greeting file not found: {args.greeting} (pass --greeting none)")
    return args


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    app = build_app(args)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
