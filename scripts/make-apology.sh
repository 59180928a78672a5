#!/usr/bin/env bash
# Regenerates shell/assets/apology.ulaw, what a caller hears when the remote voice agent fails:
# "I'm sorry." "One moment please." from Debian's asterisk-core-sounds-en-wav (Allison Smith,
# CC-BY-SA-3.0; see shell/assets/NOTICE), with 150 ms of silence between the two prompts.
# Output: raw 8 kHz mu-law, no header, deterministic (sox -D disables dither).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=/usr/share/asterisk/sounds/en_US_f_Allison
if [ ! -f "$dir/im-sorry.wav" ]; then
  bash scripts/install-audio-data.sh
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sox -n -r 8000 -c 1 "$tmp/gap.wav" trim 0 0.15
sox -D "$dir/im-sorry.wav" "$tmp/gap.wav" "$dir/one-moment-please.wav" \
  -t raw -r 8000 -c 1 -e mu-law shell/assets/apology.ulaw
ls -l shell/assets/apology.ulaw
