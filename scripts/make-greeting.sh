#!/usr/bin/env bash
# Regenerates engine/assets/greeting.ulaw, the echo agent's greeting: "Hello" and a beep, from
# Debian's asterisk-core-sounds-en-wav (Allison Smith, CC-BY-SA-3.0; see engine/assets/NOTICE).
# Output: raw 8 kHz mu-law, no header, deterministic (sox -D disables dither).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=/usr/share/asterisk/sounds/en_US_f_Allison
if [ ! -f "$dir/hello.wav" ]; then
  bash scripts/install-audio-data.sh
fi
sox -D "$dir/hello.wav" "$dir/beep.wav" -t raw -r 8000 -c 1 -e mu-law engine/assets/greeting.ulaw
ls -l engine/assets/greeting.ulaw
