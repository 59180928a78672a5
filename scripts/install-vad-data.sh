#!/usr/bin/env bash
# Installs the VAD corpus (benches/vad_eval): Debian packages of real voices, synthetic voices and
# game soundtracks, converted by scripts/vad-data.py to 8 kHz 16-bit mono WAV under
# ${HANDSET_VAD_DATA:-/var/tmp/handset-vad}/{speech,music}/<source>/. Sources and their licences:
#   - asterisk-core-sounds-en-wav (Allison, en), asterisk-prompt-it-menardi-wav (it),
#     asterisk-prompt-es-co (es, Colombia), asterisk-prompt-fr-armelle (fr): voice prompts;
#   - fillets-ng-data-cs, fillets-ng-data-nl: game dialogue, two actors per language;
#   - espeak-ng (24 languages, two voices each) and flite (five voices) reading coreutils'
#     translated messages;
#   - asterisk-moh-opsound-wav, wesnoth-1.16-music, hyperrogue-music, singularity-music,
#     asc-music, drascula-music, nexuiz-music, warzone2100-music: music of many styles.
# Not used, and never to be: planetblupi-music-ogg and asterisk-core-sounds-{es,fr,it,ru}-*, kept
# for an independent evaluation. About 0.9 GB of packages and 0.6 GB of WAV; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${HANDSET_VAD_DATA:-/var/tmp/handset-vad}
PACKAGES=(
    asterisk-core-sounds-en-wav asterisk-moh-opsound-wav asterisk-prompt-es-co
    asterisk-prompt-fr-armelle asterisk-prompt-it-menardi-wav fillets-ng-data-cs fillets-ng-data-nl
    espeak-ng flite sox libsox-fmt-all opus-tools
    wesnoth-1.16-music hyperrogue-music singularity-music asc-music drascula-music nexuiz-music
    warzone2100-music
)

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-vad-data: installing ${missing[*]}"
    apt_install() {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}"
    }
    if ! apt_install; then
        echo "install-vad-data: install failed, running apt-get update and retrying"
        "${SUDO[@]}" apt-get update
        apt_install
    fi
fi
python3 scripts/vad-data.py "$DATA"

# Silero VAD v6 for the comparison (`cargo bench --bench vad_eval -- --silero`): ONNX Runtime in
# a virtual environment of its own, and the model file the silero-vad wheel ships (MIT licence).
if [ ! -x "$DATA/venv/bin/python" ]; then
    python3 -m venv "$DATA/venv"
fi
"$DATA/venv/bin/pip" install --quiet onnxruntime==1.32.0 numpy==2.4.6
if [ ! -f "$DATA/silero_vad.onnx" ]; then
    wheels=$(mktemp -d)
    "$DATA/venv/bin/pip" download --quiet --no-deps silero-vad==6.2.3 -d "$wheels"
    unzip -p "$wheels"/silero_vad-6.2.3-py3-none-any.whl silero_vad/data/silero_vad.onnx \
        > "$DATA/silero_vad.onnx.part"
    mv "$DATA/silero_vad.onnx.part" "$DATA/silero_vad.onnx"
    rm -rf "$wheels"
fi
# Held-out hold music for `handset-sim --scenario hold --music "$DATA/heldout-music.wav"`: the first
# minute of five drascula tracks and of the four warzone2100 ones (both held-out soundtracks).
if [ ! -f "$DATA/heldout-music.wav" ]; then
    parts=$(mktemp -d)
    inputs=()
    for f in "$DATA"/music/drascula/000[0-4]-*.wav "$DATA"/music/warzone2100/*.wav; do
        sox -V1 "$f" "$parts/$(basename "$(dirname "$f")")-$(basename "$f")" trim 0 60
        inputs+=("$parts/$(basename "$(dirname "$f")")-$(basename "$f")")
    done
    sox -V1 "${inputs[@]}" "$DATA/heldout-music.wav.part.wav"
    mv "$DATA/heldout-music.wav.part.wav" "$DATA/heldout-music.wav"
    rm -rf "$parts"
fi
echo "install-vad-data: corpus and Silero VAD ready under $DATA"
