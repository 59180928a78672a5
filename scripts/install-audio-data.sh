#!/usr/bin/env bash
# Installs the offline audio used by the greeting and apology scripts and by `handset-sim` (the VAD corpus is scripts/install-vad-data.sh):
#   - asterisk-core-sounds-en-wav: real 8 kHz/16-bit/mono telephone speech (Allison Smith prompts),
#     under /usr/share/asterisk/sounds/en_US_f_Allison/ (CC-BY-SA-3.0);
#   - asterisk-moh-opsound-wav: hold music, 8 kHz/16-bit/mono, under /usr/share/asterisk/moh/ (CC-BY-SA-3.0);
#   - sox: soxi/sox, to inspect and convert audio.
# Idempotent: skips the install when the data and tools are already present, and runs `apt-get update`
# only when the package lists are missing or the first install attempt fails. Works as root without
# sudo; uses sudo only when run as another user.
set -euo pipefail

SPEECH_DIR=/usr/share/asterisk/sounds/en_US_f_Allison
MOH_DIR=/usr/share/asterisk/moh
PACKAGES=(asterisk-core-sounds-en-wav asterisk-moh-opsound-wav sox)

have_data() {
    [ -d "$SPEECH_DIR" ] && [ -n "$(find "$SPEECH_DIR" -name '*.wav' -print -quit 2>/dev/null)" ] &&
        [ -d "$MOH_DIR" ] && [ -n "$(find "$MOH_DIR" -name '*.wav' -print -quit 2>/dev/null)" ] &&
        command -v sox >/dev/null && command -v soxi >/dev/null
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    SUDO=(sudo)
fi

if have_data; then
    echo "install-audio-data: already installed, nothing to do"
else
    apt_install() {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${PACKAGES[@]}"
    }
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -print -quit 2>/dev/null)" ]; then
        echo "install-audio-data: package lists missing, running apt-get update"
        "${SUDO[@]}" apt-get update
    fi
    echo "install-audio-data: installing ${PACKAGES[*]}"
    if ! apt_install; then
        echo "install-audio-data: install failed, running apt-get update and retrying"
        "${SUDO[@]}" apt-get update
        apt_install
    fi
    have_data || { echo "install-audio-data: data still missing after install" >&2; exit 1; }
fi

speech_count=$(find "$SPEECH_DIR" -name '*.wav' | wc -l)
moh_count=$(find "$MOH_DIR" -name '*.wav' | wc -l)
echo "install-audio-data: speech: $speech_count WAV files under $SPEECH_DIR"
echo "install-audio-data: hold music: $moh_count WAV files under $MOH_DIR"
# Every file the evaluation reads must be 8 kHz, 16-bit, mono PCM; report any that are not.
odd=0
while IFS= read -r f; do
    fmt="$(soxi -r "$f") $(soxi -b "$f") $(soxi -c "$f") $(soxi -e "$f")"
    if [ "$fmt" != "8000 16 1 Signed Integer PCM" ]; then
        echo "install-audio-data: unexpected format ($fmt): $f"
        odd=$((odd + 1))
    fi
done < <(find "$SPEECH_DIR" "$MOH_DIR" -name '*.wav')
echo "install-audio-data: $odd file(s) not in 8 kHz 16-bit mono PCM"
