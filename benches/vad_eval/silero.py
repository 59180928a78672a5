#!/usr/bin/env python3
"""Silero VAD (v6, ONNX, 8 kHz) over raw signals, for benches/vad_eval (`--silero`).

Usage: silero.py MODEL.onnx FILE.s16 [FILE.s16 ...]
Each FILE.s16 is 8 kHz mono signed 16-bit little-endian PCM; writes FILE.s16.prob: one float32
(little-endian) per 20 ms frame, the speech probability of the newest 256-sample (32 ms) chunk
that ends within or before that frame (0 before the first), i.e. what a causal caller of Silero
knows at the end of each frame. The model is called as the silero-vad package's OnnxWrapper calls
it: each chunk preceded by the last 32 samples of the one before, state carried over, one thread.
"""

import sys

import numpy as np
import onnxruntime

CHUNK = 256
CONTEXT = 32
FRAME = 160


def probabilities(session, pcm):
    x = pcm.astype(np.float32) / 32768.0
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros(CONTEXT, dtype=np.float32)
    sr = np.array(8000, dtype=np.int64)
    frames = len(x) // FRAME
    out = np.zeros(frames, dtype=np.float32)
    last = 0.0
    chunk_end = CHUNK
    for f in range(frames):
        frame_end = (f + 1) * FRAME
        while chunk_end <= frame_end:
            chunk = x[chunk_end - CHUNK:chunk_end]
            inp = np.concatenate([context, chunk])[None, :]
            prob, state = session.run(None, {"input": inp, "state": state, "sr": sr})
            last = float(prob.reshape(-1)[0])
            context = chunk[-CONTEXT:]
            chunk_end += CHUNK
        out[f] = last
    return out


def main():
    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(sys.argv[1], sess_options=opts, providers=["CPUExecutionProvider"])
    for path in sys.argv[2:]:
        pcm = np.fromfile(path, dtype="<i2")
        probabilities(session, pcm).astype("<f4").tofile(path + ".prob")


if __name__ == "__main__":
    main()
