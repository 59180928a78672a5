#!/usr/bin/env python3
"""Builds the VAD corpus (benches/vad_eval) from Debian packages: every file 8 kHz, 16-bit, mono.

Layout: DATA/<kind>/<source>/<name>.wav, kind "speech" or "music", one folder per source (a
speaker, a synthetic voice, a game's soundtrack). Which source trains, validates or is held out is
decided in benches/vad_eval/data.rs, by source, never by file or frame. Deterministic: the same
packages give the same files (fixed sentence draws, sox without dither).

Usage: scripts/vad-data.py DATA   (scripts/install-vad-data.sh installs the packages and runs it)
"""

import gettext
import glob
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile

# Real voices: (source, glob). The Asterisk core sound sets other than English are not used here:
# they are reserved for an independent evaluation.
REAL_SPEECH = [
    ("allison-en", "/usr/share/asterisk/sounds/en_US_f_Allison/**/*.wav"),
    ("menardi-it", "/usr/share/asterisk/sounds/it_IT_f_Menardi/**/*.wav"),
    ("co-es", "/usr/share/asterisk/sounds/es/**/*.gsm"),
    ("armelle-fr", "/usr/share/asterisk/sounds/fr/**/*.gsm"),
]
# fillets-ng dialogues, one source per language and speaker (the letter in the file name: m, v).
FILLETS = "/usr/share/games/fillets-ng/sound/*/{lang}/*-{who}-*.ogg"
FILLETS_SOURCES = [(lang, who) for lang in ("cs", "nl") for who in ("m", "v")]

# Hold music: (source, glob); nexuiz's music is inside a zip.
MUSIC = [
    ("opsound", "/usr/share/asterisk/moh/*.wav"),
    ("wesnoth", "/usr/share/games/wesnoth/1.16/data/core/music/*.ogg"),
    ("hyperrogue", "/usr/share/hyperrogue/music/*.ogg"),
    ("singularity", "/usr/share/games/singularity/music/*.ogg"),
    ("asc", "/usr/share/games/asc/music/*.mp3"),
    ("drascula", "/usr/share/scummvm/drascula/audio/*.ogg"),
    ("warzone2100", "/usr/share/games/warzone2100/music/**/*.opus"),
]
NEXUIZ_PK3 = "/usr/share/games/nexuiz/data/music.pk3"
# At most this many seconds per music source, taken from the start of each track in turn.
MUSIC_SECONDS = 20 * 60

# Synthetic voices: espeak-ng per language (a male and a female variant), flite per voice. The
# sentences are the language's own coreutils messages (Debian's coreutils translations).
ESPEAK_LANGS = [
    "de", "es", "pl", "ru", "it", "pt", "nl", "sv", "cs", "tr", "vi", "hu",
    "da", "fi", "el", "ro", "sk", "uk", "ca", "id", "bg", "hr", "ja", "ko",
]
ESPEAK_VARIANTS = [("m", ""), ("f", "+f3")]
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]
SENTENCES = 40
SEED = 0x5EED


def sox(src, dst, extra_in=()):
    subprocess.run(
        ["sox", "-V1", "-G", *extra_in, src, "-D", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed", dst],
        check=True,
    )


def sentences(lang):
    # English is the catalogues' source language: the German catalogue's message ids.
    path = f"/usr/share/locale/{'de' if lang == 'en' else lang}/LC_MESSAGES/coreutils.mo"
    with open(path, "rb") as f:
        cat = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 - the catalogue is the data
    out = set()
    for k, v in cat.items():
        text = v if lang != "en" else (k if isinstance(k, str) else k[0])
        if not isinstance(text, str) or not k:
            continue
        text = re.sub(r"%[-+ #0-9.*]*[a-zA-Z]|\\[nt]|[`'\"%<>\[\]{}()=|_/-]+", " ", text)
        text = " ".join(text.split())
        if 30 <= len(text) <= 160 and len(text.split()) >= 4:
            out.add(text)
    out = sorted(out)
    random.Random(f"{SEED}-{lang}").shuffle(out)
    return out[:SENTENCES]


def convert_all(data, kind, source, files, limit=None):
    out = os.path.join(data, kind, source)
    os.makedirs(out, exist_ok=True)
    total = 0.0
    for i, f in enumerate(sorted(files)):
        dst = os.path.join(out, f"{i:04d}-{os.path.splitext(os.path.basename(f))[0]}.wav")
        if not os.path.exists(dst):
            tmp = dst + ".part.wav"
            if f.endswith(".opus"):
                # sox has no Opus reader: opus-tools decodes it first.
                decoded = dst + ".opus.wav"
                subprocess.run(["opusdec", "--quiet", f, decoded], check=True)
                f = decoded
            if limit is not None:
                left = limit - total
                if left <= 1:
                    break
                subprocess.run(
                    ["sox", "-V1", "-G", f, "-D", "-r", "8000", "-c", "1", "-b", "16", "-e", "signed",
                     tmp, "trim", "0", str(min(left, 300))],
                    check=True,
                )
            else:
                sox(f, tmp)
            os.replace(tmp, dst)
            if f.endswith(".opus.wav"):
                os.remove(f)
        total += float(subprocess.run(["soxi", "-D", dst], capture_output=True, text=True, check=True).stdout)
        if limit is not None and total >= limit:
            break
    return len(os.listdir(out)), total


def synthesize(data, source, texts, tmp, command):
    """One synthetic voice: each text spoken by `command(text, wav)` and converted; returns the file count."""
    out = os.path.join(data, "speech", source)
    os.makedirs(out, exist_ok=True)
    for i, text in enumerate(texts):
        dst = os.path.join(out, f"{i:04d}.wav")
        if os.path.exists(dst):
            continue
        raw = os.path.join(tmp, "voice.wav")
        subprocess.run(command(text, raw), check=True)
        sox(raw, dst + ".part.wav")
        os.replace(dst + ".part.wav", dst)
    return len(os.listdir(out))


def main():
    data = sys.argv[1]
    report = []
    for source, pattern in REAL_SPEECH:
        files = glob.glob(pattern, recursive=True)
        if not files:
            sys.exit(f"vad-data: no files for {source} ({pattern}); run scripts/install-vad-data.sh")
        report.append(("speech", source, *convert_all(data, "speech", source, files)))
    for lang, who in FILLETS_SOURCES:
        files = glob.glob(FILLETS.format(lang=lang, who=who))
        report.append(("speech", f"fillets-{lang}-{who}", *convert_all(data, "speech", f"fillets-{lang}-{who}", files)))
    with tempfile.TemporaryDirectory() as tmp:
        for lang in ESPEAK_LANGS:
            texts = sentences(lang)
            for tag, variant in ESPEAK_VARIANTS:
                source = f"espeak-{lang}-{tag}"
                voice = lang + variant
                n = synthesize(data, source, texts, tmp, lambda text, raw: ["espeak-ng", "-v", voice, "-w", raw, text])
                report.append(("speech", source, n, None))
        en = sentences("en")
        for voice in FLITE_VOICES:
            source = f"flite-{voice}"
            n = synthesize(data, source, en, tmp, lambda text, raw: ["flite", "-voice", voice, "-t", text, "-o", raw])
            report.append(("speech", source, n, None))
        for source, pattern in MUSIC:
            files = glob.glob(pattern, recursive=True)
            if not files:
                sys.exit(f"vad-data: no files for {source} ({pattern}); run scripts/install-vad-data.sh")
            report.append(("music", source, *convert_all(data, "music", source, files, MUSIC_SECONDS)))
        with zipfile.ZipFile(NEXUIZ_PK3) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".ogg"))
            files = []
            for n in names:
                p = os.path.join(tmp, os.path.basename(n))
                with open(p, "wb") as f:
                    f.write(z.read(n))
                files.append(p)
            report.append(("music", "nexuiz", *convert_all(data, "music", "nexuiz", files, MUSIC_SECONDS)))
    for kind, source, n, seconds in report:
        extra = f", {seconds / 60:.1f} min" if seconds is not None else ""
        print(f"vad-data: {kind} {source}: {n} files{extra}")


if __name__ == "__main__":
    main()
